#!/usr/bin/env bash
# Install into .venv and run the whole test suite (real-ComfyUI tests need COMFYUI_DIR; skipped otherwise).
source "$(dirname "$0")/_env.sh"
install_requirements -r requirements-test.txt
set +e
"$VPY" -m pytest "$@"
code=$?
if [ "$code" -eq 5 ]; then
  echo "pytest collected no tests: that is a failure for this project" >&2
  exit 1
fi
exit "$code"
