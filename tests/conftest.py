"""Shared test setup: the pack is importable as ``poseanimate``; model folders point at a temp dir."""
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # test helper modules import by plain name

from pack_loader import load_pack  # noqa: E402

load_pack()


@pytest.fixture()
def models_dir(tmp_path, monkeypatch):
    """A fresh fallback model root (what ComfyUI's models/ would be)."""
    root = tmp_path / "models"
    root.mkdir()
    monkeypatch.setenv("POSEANIMATE_MODELS_DIR", str(root))
    return root
