"""Import this checkout as the package ``poseanimate`` without ComfyUI.

ComfyUI imports a custom-node folder by path (its folder name has a dash, so it is
not importable by name); scripts, benchmarks and tests do the same through here.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
NAME = "poseanimate"


def load_pack():
    """Return the pack's top-level module, importing it once."""
    if NAME in sys.modules:
        return sys.modules[NAME]
    spec = importlib.util.spec_from_file_location(NAME, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[NAME] = module
    spec.loader.exec_module(module)
    return module
