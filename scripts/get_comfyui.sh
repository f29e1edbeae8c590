#!/usr/bin/env bash
# Build a throw-away ComfyUI for the opt-in real-ComfyUI tests (tests/test_comfyui_*.py).
#
#   scripts/get_comfyui.sh GIT_DIR [DEST]
#
# GIT_DIR: a bare git directory of Comfy-Org/ComfyUI (what the session `fetch` tool returns).
# DEST:    where to extract it (default /tmp/comfyui). Never inside this checkout: nothing of
#          ComfyUI is committed.
# Afterwards: COMFYUI_DIR=DEST pytest tests/test_comfyui_harness.py
#
# The venv is DEST/.venv (what the harness picks when COMFYUI_PYTHON is unset). It gets
# torch==2.13.0 (the CPU build the wheel index here serves), ComfyUI's requirements with a
# constraint pinning that torch, plus `requests` (imported by ComfyUI, missing from its list),
# comfy-cli (its UI->API workflow converter is used by the harness) and this pack's own
# requirements (what ComfyUI-Manager would install for a user).
# ComfyUI imports torchvision at start; the only torchvision for this torch is a CUDA build
# whose import fails with "operator torchvision::nms does not exist". A small module loaded
# from a .pth declares the torchvision::nms/qnms op schemas just before torchvision is first
# imported, which lets the pure-Python parts of torchvision load.
set -euo pipefail

GIT_DIR=${1:?usage: get_comfyui.sh GIT_DIR [DEST]}
DEST=${2:-/tmp/comfyui}
REV=${COMFYUI_REV:-HEAD}
PY=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
mkdir -p "$DEST"
dest=$(cd "$DEST" && pwd)
case "$dest/" in
  "$here"/*) echo "refusing to build ComfyUI inside this checkout ($dest)" >&2; exit 2 ;;
esac

echo "extracting $(git --git-dir="$GIT_DIR" rev-parse "$REV") into $dest"
# A snapshot may lack its largest blobs (listed in the tree, absent from the object store);
# `git archive` stops at the first one, so they are excluded by path and named here.
excludes=()
tree=$(git --git-dir="$GIT_DIR" ls-tree -r "$REV")
for oid in $(awk '{print $3}' <<<"$tree" | git --git-dir="$GIT_DIR" cat-file --batch-check | awk '$2 == "missing" {print $1}'); do
  path=$(awk -F'\t' -v oid="$oid" '{split($1, m, " "); if (m[3] == oid) print $2}' <<<"$tree")
  echo "  not in the snapshot, skipped: $path" >&2
  excludes+=(":(exclude)$path")
done
git --git-dir="$GIT_DIR" archive --format=tar "$REV" -- . "${excludes[@]}" | tar -x -C "$dest"

if [ ! -x "$dest/.venv/bin/python" ]; then
  "$PY" -m venv "$dest/.venv"
fi
VPY="$dest/.venv/bin/python"
"$VPY" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
"$VPY" -m pip install -q "$TORCH_SPEC"
constraints="$dest/.venv/torch-constraint.txt"
"$VPY" -c "from importlib.metadata import version; print('torch==' + version('torch').split('+')[0])" > "$constraints"
"$VPY" -m pip install -q -c "$constraints" -r "$dest/requirements.txt" requests
# comfy-cli: its UI-format -> API-format converter checks the shipped workflows (heavy deps,
# so it lives here rather than in the pack's test venv).
"$VPY" -m pip install -q -c "$constraints" comfy-cli
# The pack's own runtime requirements (ComfyUI-Manager would install these on a user's machine).
"$VPY" -m pip install -q -c "$constraints" -r "$here/requirements.txt" -r "$here/requirements-demo.txt"
# The only torchaudio for this torch is a CUDA build whose extension fails to load; transformers'
# audio utilities then break diffusers imports inside ComfyUI. ComfyUI treats torchaudio as
# optional (only its audio nodes need it), so remove it.
"$VPY" -m pip uninstall -q -y torchaudio >/dev/null 2>&1 || true

site=$("$VPY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
cat > "$site/torchvision_cpu_schema.py" <<'PY'
"""Let the CUDA-only torchvision wheel import on a CPU torch (test ComfyUI venv only).

torchvision registers kernels for torchvision::nms/qnms from its compiled library; when
that library cannot load (no CUDA runtime), the op schemas are missing and the import
fails. Declaring the schemas first is enough for the pure-Python parts ComfyUI uses.
A meta-path hook runs this lazily, so interpreters that never import torchvision do not
pay for importing torch.
"""
import importlib.abc
import sys

_LIB = None


def _declare():
    global _LIB
    import torch

    lib = torch.library.Library("torchvision", "DEF")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _LIB = lib  # keep the registration alive


class _Hook(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torchvision" and _LIB is None:
            sys.meta_path.remove(self)
            try:
                _declare()
            except RuntimeError:  # already declared (a real CPU torchvision did it)
                pass
        return None


sys.meta_path.insert(0, _Hook())
PY
echo "import torchvision_cpu_schema" > "$site/torchvision_cpu_schema.pth"

mkdir -p "$dest/input" "$dest/output" "$dest/user"
"$VPY" -c "import torchvision, torch; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
echo "ComfyUI ready: COMFYUI_DIR=$dest (python: $VPY)"
