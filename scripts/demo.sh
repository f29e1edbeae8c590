#!/usr/bin/env bash
# Install into .venv and run the main job on the embedded default detector and the bundled sample media.
# Extra arguments go to animate.py (e.g. --reference me.png --driving dance.mp4 --out output/).
source "$(dirname "$0")/_env.sh"
install_requirements -r requirements.txt -r requirements-demo.txt
exec "$VPY" animate.py "$@"
