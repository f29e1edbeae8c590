"""ComfyUI-PoseAnimate: pose-driven character animation nodes.

ComfyUI imports this file; it gathers the node mappings of every module in nodes/.
A family whose optional dependencies are missing is skipped with a logged reason,
so the rest of the pack still loads.
"""
import importlib
import logging
import pkgutil
from pathlib import Path

NODE_CLASS_MAPPINGS = {}
NODE_DISPLAY_NAME_MAPPINGS = {}
WEB_DIRECTORY = None

_FAMILIES = ("pose", "wan", "one_to_all", "unianimate", "animatediff")  # listed first, in this order
_HELPERS = ("host", "common")  # node modules without nodes of their own
_log = logging.getLogger("PoseAnimate")


def _load_families() -> None:
    from .nodes import host, validation

    host.register_folders()
    found = sorted(m.name for m in pkgutil.iter_modules([str(Path(__file__).parent / "nodes")]))
    # a new family is a new nodes/<family>.py: picked up without editing this file
    for name in list(_FAMILIES) + [n for n in found if n not in _FAMILIES and n not in _HELPERS and not n.startswith("_")]:
        try:
            module = importlib.import_module(f".nodes.{name}", __name__)
        except ImportError as exc:  # an optional dependency missing: keep the other families
            if getattr(exc, "name", None) and exc.name.endswith(f"nodes.{name}"):
                continue  # family not built yet
            _log.warning("PoseAnimate: %s nodes not loaded: %s", name, exc)
            continue
        NODE_CLASS_MAPPINGS.update(getattr(module, "NODE_CLASS_MAPPINGS", {}))
        NODE_DISPLAY_NAME_MAPPINGS.update(getattr(module, "NODE_DISPLAY_NAME_MAPPINGS", {}))
    validation.install(NODE_CLASS_MAPPINGS)  # every FLOAT input finite and in range (nodes/validation.py)


# ComfyUI and pack_loader import this file as a package. pytest may also import it bare (as the
# package of a checkout folder whose name is no valid module name), where relative imports
# cannot work; then there is nothing to register.
if __package__:
    _load_families()

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
