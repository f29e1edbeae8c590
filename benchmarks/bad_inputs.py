"""The bad-input figures: runs tests/test_comfyui_bad_inputs.py against a real ComfyUI and prints
``bad_inputs_total``, ``bad_inputs_clear`` and ``bad_inputs_server_deaths``.

    COMFYUI_DIR=/path/to/ComfyUI python benchmarks/bad_inputs.py
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    if not os.environ.get("COMFYUI_DIR"):
        print("COMFYUI_DIR is not set: the bad-input suite needs a real ComfyUI (scripts/get_comfyui.sh builds one)")
        return 2
    proc = subprocess.run([sys.executable, "-m", "pytest", "tests/test_comfyui_bad_inputs.py", "-q", "-s",
                           "-p", "no:cacheprovider"], cwd=ROOT, capture_output=True, text=True)
    figures = re.findall(r"^(bad_inputs_\w+: \d+)$", proc.stdout, re.M)
    for line in figures:
        print(line)
    if not figures:
        print(proc.stdout[-3000:] + proc.stderr[-2000:])
    return proc.returncode


if __name__ == "__main__":
    raise SystemExit(main())
