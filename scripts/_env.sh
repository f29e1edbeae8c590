# Sourced by scripts/demo.sh and scripts/test.sh: a venv in .venv with torch and the pack's requirements.
# torch: an already-installed torch is kept; otherwise TORCH_SPEC (default torch==2.13.0) is installed.
# A constraints file pins the installed torch so no requirement can pull another build.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
VPY=.venv/bin/python
"$VPY" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
if ! "$VPY" -c "import torch" >/dev/null 2>&1; then
  "$VPY" -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
fi
TORCH_VERSION=$("$VPY" -c "import torch; print(torch.__version__.split('+')[0])")
CONSTRAINTS=$(mktemp)
echo "torch==${TORCH_VERSION}" > "$CONSTRAINTS"
install_requirements() {
  "$VPY" -m pip install -q -c "$CONSTRAINTS" "$@"
}
