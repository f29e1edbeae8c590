"""Real photos through the pose workflow: odd sizes, huge pictures, nobody in the picture.

Phone photos are 1080x2179 or 750x1101 (odd, encoders refuse them), 12+ megapixels, or show a
person the embedded detector misses at full size. The shipped pose workflow must give even
(multiple-of-16) videos an H.264 encoder accepts, detect huge pictures at a capped size, retry
smaller when nobody is found, and fail on a reference with nobody before touching the video.
"""
import io
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from poseanimate.nodes.pose import DetectPoses, PrepareDrivingVideo
from poseanimate.pose import keypoints as kp
from poseanimate.pose import reference, sample_media, stage
from poseanimate.headless.executor import Executor

ROOT = Path(__file__).resolve().parents[1]
PHONE_SIZES = [(1080, 2179), (750, 1101)]


class SizeLimitedDetector:
    """Finds one standing person, but only on pictures whose long side is at most ``finds_up_to``
    (the embedded detector's real failure on large close-ups); records what it was given."""

    name = "size-limited"

    def __init__(self, finds_up_to: int = 10**9):
        self.finds_up_to, self.seen = finds_up_to, []

    def detect_batch(self, images):
        out = []
        for image in images:
            h, w = image.shape[:2]
            self.seen.append((w, h))
            people = sample_media.standing_person()[None] if max(w, h) <= self.finds_up_to else np.zeros((0, 134, 3))
            out.append(kp.PoseFrame(w, h, people))
        return out

    def close(self):
        pass


def _phone_reference(width, height):
    """The sample character on a phone-sized picture (IMAGE float 0..1)."""
    person = sample_media.sample_reference_image()
    canvas = np.full((height, width, 3), 90, np.uint8)
    side = min(width, height)
    scaled = cv2.resize(person, (side, side))
    y0 = (height - side) // 2
    canvas[y0:y0 + side, (width - side) // 2:(width - side) // 2 + side] = scaled
    return torch.from_numpy(canvas)[None].float() / 255


def _encode_h264(frames) -> bytes:
    av = pytest.importorskip("av")
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=12)
        stream.height, stream.width = frames.shape[1], frames.shape[2]
        stream.pix_fmt = "yuv420p"
        for image in (frames.numpy() * 255).round().astype(np.uint8):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
    return buf.getvalue()


@pytest.mark.parametrize("size", PHONE_SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("mode,style,want", [("unianimate", "unianimate", {(1080, 2179): (512, 768), (750, 1101): (512, 768)}),
                                             ("one_to_all_ref", "one_to_all", {(1080, 2179): (768, 1536), (750, 1101): (736, 1088)})])
def test_pose_workflow_runs_with_odd_phone_references(monkeypatch, tmp_path, size, mode, style, want):
    monkeypatch.setenv("POSEANIMATE_OUTPUT_DIR", str(tmp_path))
    graph = json.loads((ROOT / "workflows" / "api" / "pose_alignment.json").read_text())
    for node in graph.values():
        if node["class_type"] == "PoseAnimateAlignPoses":
            node["inputs"]["mode"] = mode
        if node["class_type"] == "PoseAnimateRenderPoses":
            node["inputs"]["style"] = style
    from poseanimate.nodes import pose as pose_nodes

    monkeypatch.setattr(pose_nodes.LoadPoseDetector, "load", lambda self, *a, **k: (SizeLimitedDetector(), "size-limited stand-in"))
    clip = torch.from_numpy(sample_media.sample_driving_clip(3, (320, 400))).float() / 255
    executor = Executor(_phone_reference(*size), clip)
    executor.run(graph)
    (_, video), = executor.saved
    assert tuple(video.images.shape[1:3][::-1]) == want[size]
    assert video.images.shape[0] == 3 and video.images.max() > 0.2
    assert len(_encode_h264(video.images)) > 0  # libx264 takes it


def test_reference_is_checked_before_the_driving_video():
    """Nobody in the reference: Prepare Driving Video (which the driving detection waits for) fails
    with the reason, and no driving frame was detected."""
    detector = SizeLimitedDetector(finds_up_to=0)
    blank = torch.full((1, 301, 199, 3), 0.5)
    (ref_pose,) = DetectPoses().detect(blank, detector)
    assert detector.seen == [(199, 301)]  # small pictures: one try
    with pytest.raises(reference.NoPersonError, match=r"No person found in the reference image \(199x301\)"):
        PrepareDrivingVideo().prepare(torch.zeros(50, 64, 64, 3), reference_pose=ref_pose)
    assert len(detector.seen) == 1
    shipped = sorted((ROOT / "workflows" / "api").glob("*.json"))
    with_driving = [p for p in shipped if "PoseAnimatePrepareDrivingVideo" in p.read_text()]
    assert len(with_driving) >= 3
    for path in with_driving:  # every shipped graph waits for the check
        name, graph = path.stem, json.loads(path.read_text())
        prep = next(n for n in graph.values() if n["class_type"] == "PoseAnimatePrepareDrivingVideo")
        src = graph[prep["inputs"]["reference_pose"][0]]
        assert src["class_type"] == "PoseAnimateDetectPoses" and graph[src["inputs"]["images"][0]]["class_type"] == "LoadImage"
        assert prep["inputs"]["fit"] == ("crop" if name.startswith("one_to_all") else "keep")
    with pytest.raises(stage.NoPersonError):
        stage.run_pose_stage(blank, torch.zeros(50, 64, 64, 3), detector)
    assert len(detector.seen) == 2  # the stage's own reference try, and no driving frame


def test_huge_references_are_detected_at_a_capped_size_and_retried_smaller():
    image = np.zeros((8064, 4000, 3), np.uint8)
    found, info = reference.detect_reference(SizeLimitedDetector(), image)
    assert info["sizes_tried"] == [[1016, 2048]]
    assert (found.width, found.height) == (4000, 8064) and found.num_people == 1  # the pose on the original canvas
    shy = SizeLimitedDetector(finds_up_to=640)  # finds people only when they are small (mediapipe on close-ups)
    found, info = reference.detect_reference(shy, np.zeros((1280, 720, 3), np.uint8))
    assert shy.seen == [(720, 1280), (360, 640)] and info["detected_at"] == [360, 640]
    assert (found.width, found.height) == (720, 1280) and found.num_people == 1
    np.testing.assert_allclose(found.people[0], sample_media.standing_person(), atol=1e-6)

