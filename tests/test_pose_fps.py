"""Output fps = driving fps / select_every_nth: Prepare Driving Video computes it, every shipped
workflow (UI and API twin) takes the saved video's fps from there."""
import json
from pathlib import Path

import pytest
import torch

import poseanimate
from paths import ui_workflow
from poseanimate.pose import frames

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = ("one_to_all_animation", "one_to_all_animation_distilled", "unianimate", "pose_alignment")
PREPARE = "PoseAnimatePrepareDrivingVideo"


def test_prepare_driving_video_divides_the_fps():
    node = poseanimate.NODE_CLASS_MAPPINGS[PREPARE]()
    clip = torch.rand(9, 32, 48, 3)
    out = node.prepare(clip, select_every_nth=2, fps=25.0)
    assert out[0].shape[0] == 5 and out[-1] == 12.5
    assert node.prepare(clip, select_every_nth=3, fps=30.0, max_frames=2)[-1] == 10.0  # a frame cap keeps the rate
    assert node.prepare(clip, select_every_nth=1, fps=24.0)[-1] == 24.0
    assert node.prepare(clip, select_every_nth=2)[-1] == frames.DEFAULT_FPS / 2  # no fps wired: the scripts' 30
    assert frames.output_fps(float("nan"), 3) == 10.0 and frames.output_fps(0, 1) == 30.0
    spec = node.INPUT_TYPES()["optional"]["fps"]
    assert spec[0] == "FLOAT" and spec[1]["forceInput"]


@pytest.mark.parametrize("name", WORKFLOWS)
def test_saved_video_fps_comes_from_prepare_driving_video(name):
    api = json.loads((ROOT / "workflows" / "api" / f"{name}.json").read_text())
    (prep,) = [k for k, v in api.items() if v["class_type"] == PREPARE]
    (comps,) = [k for k, v in api.items() if v["class_type"] == "PoseAnimateVideoComponents"]
    (create,) = [v for v in api.values() if v["class_type"] == "CreateVideo"]
    assert create["inputs"]["fps"] == [prep, 4] and api[prep]["inputs"]["fps"] == [comps, 2]

    ui = json.loads(ui_workflow(name).read_text())
    nodes = {n["id"]: n for n in ui["nodes"]}
    links = {link[0]: link for link in ui["links"]}
    (prep_ui,) = [n for n in ui["nodes"] if n["type"] == PREPARE]
    (create_ui,) = [n for n in ui["nodes"] if n["type"] == "CreateVideo"]
    fps_link = links[next(i["link"] for i in create_ui["inputs"] if i["name"] == "fps")]
    assert fps_link[1:3] == [prep_ui["id"], 4] and fps_link[0] in prep_ui["outputs"][4]["links"]
    in_link = links[next(i["link"] for i in prep_ui["inputs"] if i["name"] == "fps")]
    assert nodes[in_link[1]]["type"] == "PoseAnimateVideoComponents" and in_link[2] == 2
    assert in_link[3:5] == [prep_ui["id"], [i["name"] for i in prep_ui["inputs"]].index("fps")]
    assert ui["last_link_id"] >= max(links)
