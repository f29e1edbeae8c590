"""Model math: pure torch + diffusers + transformers, no ComfyUI imports."""
