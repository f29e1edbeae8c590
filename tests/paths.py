"""Where test data lives (import as ``from paths import REFERENCE``; tests/ is on sys.path)."""
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
REFERENCE = FIXTURES / "reference"
WORKFLOWS = ROOT / "workflows"

# ComfyUI's template browser (frontend 1.27) shows a custom-node template's file name as its
# title and, with - and _ as spaces, as its description: the UI templates carry readable names,
# the API twins the short names client.py and the tests use. API twin stem -> template stem.
TEMPLATES = {
    "one_to_all_animation": "One-to-All Animation - animate a character photo with a dance video",
    "one_to_all_animation_distilled": "One-to-All Animation 4-step distilled - animate a character photo with a dance video",
    "unianimate": "UniAnimate-DiT - animate a character photo with a dance video",
    "animatediff_v2v": "AnimateDiff - restyle a video with an SD1.5 model",
    "animatediff_v2v_pose": "AnimateDiff with pose ControlNet - restyle a dance video, poses kept",
    "pose_alignment": "Pose Alignment - fit dance poses to a character photo",
}


def ui_workflow(api_stem: str) -> Path:
    """The UI template whose API twin is ``workflows/api/<api_stem>.json``."""
    return WORKFLOWS / f"{TEMPLATES.get(api_stem, api_stem)}.json"


def api_twin(ui_path: Path) -> Path:
    """The API-format twin of a UI template."""
    by_title = {title: stem for stem, title in TEMPLATES.items()}
    return WORKFLOWS / "api" / f"{by_title.get(Path(ui_path).stem, Path(ui_path).stem)}.json"
