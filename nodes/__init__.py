"""ComfyUI adapters: one file per family. Each module exports NODE_CLASS_MAPPINGS/NODE_DISPLAY_NAME_MAPPINGS."""
