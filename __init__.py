"""ComfyUI-PoseAnimate: pose-driven character animation nodes.

ComfyUI imports this file; it gathers the node mappings of every module in nodes/.
A family whose optional dependencies are missing is skipped with a logged reason,
so the rest of the pack still loads.
"""
import importlib
import logging

NODE_CLASS_MAPPINGS = {}
NODE_DISPLAY_NAME_MAPPINGS = {}
WEB_DIRECTORY = None

_FAMILIES = ("pose", "wan", "one_to_all", "unianimate", "animatediff")
_log = logging.getLogger("PoseAnimate")

from .nodes import host as _host  # noqa: E402

_host.register_folders()

for _name in _FAMILIES:
    try:
        _module = importlib.import_module(f".nodes.{_name}", __name__)
    except ImportError as _exc:  # an optional dependency missing: keep the other families
        if getattr(_exc, "name", None) and _exc.name.endswith(f"nodes.{_name}"):
            continue  # family not built yet
        _log.warning("PoseAnimate: %s nodes not loaded: %s", _name, _exc)
        continue
    NODE_CLASS_MAPPINGS.update(getattr(_module, "NODE_CLASS_MAPPINGS", {}))
    NODE_DISPLAY_NAME_MAPPINGS.update(getattr(_module, "NODE_DISPLAY_NAME_MAPPINGS", {}))

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
