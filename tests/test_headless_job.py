"""The main job (animate.py REQUEST.json): hosted requests run in process through the shipped API
workflows, the pose-stage fallback without weights, Ctrl-C, and the in-process core nodes."""
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import one_to_all_tiny
from poseanimate.headless import core_nodes, executor, job
from poseanimate.pose import sample_media, video_io

ROOT = Path(__file__).resolve().parents[1]


def write_media(folder: Path, frames: int = 6):
    ref = sample_media.sample_reference_image()
    ref = cv2.resize(ref[:, 51:461], (128, 160), interpolation=cv2.INTER_AREA)
    cv2.imwrite(str(folder / "ref.png"), cv2.cvtColor(ref, cv2.COLOR_RGB2BGR))
    video_io.write_mp4(folder / "drive.mp4", sample_media.sample_driving_clip(frames, (160, 200)), fps=12)
    return str(folder / "ref.png"), str(folder / "drive.mp4")


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    return write_media(tmp_path_factory.mktemp("media"))


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    one_to_all_tiny.write_tiny_models(root)
    return root


def fast_one_to_all(folder: Path) -> Path:
    """The shipped One-to-All API workflow with fp32 loaders (bf16 convolutions are slow on CPU)."""
    graph = json.loads((ROOT / "workflows" / "api" / "one_to_all_animation.json").read_text())
    for node in graph.values():
        if "precision" in node["inputs"]:
            node["inputs"]["precision"] = "fp32"
    path = folder / "one_to_all_fp32.json"
    path.write_text(json.dumps(graph))
    return path


def test_one_to_all_request_runs_in_process(tiny_models, media, tmp_path, monkeypatch):
    monkeypatch.setenv("POSEANIMATE_MODELS_DIR", str(tiny_models))
    request = {"prompt": "a dance", "image_url": media[0], "video_url": media[1], "num_inference_steps": 2,
               "resolution": "reference", "image_guidance_scale": 1.0, "pose_guidance_scale": 1.0, "seed": 7}
    done = job.run_request(request, tmp_path / "out", workflow=fast_one_to_all(tmp_path), quiet=True)
    assert not done.pose_only and done.result["seed"] == 7
    frames, fps = video_io.read_video(done.video)
    assert frames.shape == (6, 160, 128, 3) and fps == pytest.approx(12.0) and frames.std() > 0
    saved = json.loads(done.result_path.read_text())
    assert saved["video"]["file_name"] == done.video.name and saved["video"]["file_size"] == done.video.stat().st_size
    assert set(saved["timings"]) == {"inference", "total"}
    assert not list((tmp_path / "out").rglob("*.part*"))


def test_missing_weights_run_the_pose_stage_and_name_the_files(media, tmp_path, models_dir, capsys):
    request = {"endpoint": "uni-animate", "prompt": "a dance", "image_url": media[0], "video_url": media[1]}
    done = job.run_request(request, tmp_path / "out")
    assert done.pose_only
    err = capsys.readouterr().err
    for m in done.missing:
        assert f"{m.name}  ->  {models_dir / m.kind}/" in err
    assert {m.kind for m in done.missing} == {"diffusion_models", "loras", "vae", "clip_vision", "text_encoders"}
    frames, _ = video_io.read_video(done.video)
    assert frames.shape[0] == 6 and frames.any()  # the rendered (UniAnimate-style) pose video
    assert done.result["pose_only"] and len(done.result["missing_models"]) == len(done.missing)
    (poses,) = done.result["files"]
    assert len(json.loads((tmp_path / "out" / poses).read_text())) == 6


def test_endpoint_comes_from_the_request(media):
    assert job.endpoint_of({"image_guidance_scale": 2}) == "one-to-all"
    assert job.endpoint_of({"cfg_scale": 2}) == "uni-animate"
    assert job.endpoint_of({"video_url": "x", "prompt": "p"}) == "animatediff-v2v"
    assert job.endpoint_of({"endpoint": "pose"}) == "pose"
    with pytest.raises(job.client_module().RequestError, match="--endpoint"):
        job.endpoint_of({"image_url": "a", "video_url": "b", "prompt": "p"})


def test_extra_model_paths_yaml(tmp_path, monkeypatch):
    from poseanimate.nodes import host

    monkeypatch.setattr(host, "_extra_folders", {})
    (tmp_path / "yaml").write_text("mine:\n  base_path: /data/ai\n  unet: models/unet\n  loras: |\n    a\n    b\n")
    job.configure_models(extra_model_paths=tmp_path / "yaml")
    assert host.folder_paths_for("diffusion_models")[1:] == ["/data/ai/models/unet"]
    assert host.folder_paths_for("loras")[1:] == ["/data/ai/a", "/data/ai/b"]


def test_core_nodes_read_and_save_without_overwriting(tmp_path):
    rgba = np.zeros((5, 4, 4), np.uint8)
    rgba[..., 3] = 255
    rgba[0, 0, 3] = 0
    cv2.imwrite(str(tmp_path / "a.png"), rgba)
    core = core_nodes.CoreNodes(input_dir=tmp_path, output_dir=tmp_path / "out")
    image, mask = core.load_image("a.png")
    assert image.shape == (1, 5, 4, 3) and float(mask[0, 0, 0]) == 1.0 and float(mask[0, 1, 1]) == 0.0
    with pytest.raises(ValueError, match="inside"):
        core.load_image("../a.png")
    video = core_nodes.Video(torch.rand(3, 8, 8, 3), 10.0)
    names = [core.save_video(video, "sub/clip")["ui"]["images"][0] for _ in range(2)]
    assert [n["filename"] for n in names] == ["clip_00001_.mp4", "clip_00002_.mp4"] and names[0]["subfolder"] == "sub"
    assert sorted(p.name for p in (tmp_path / "out" / "sub").iterdir()) == ["clip_00001_.mp4", "clip_00002_.mp4"]


def test_executor_names_the_node_at_fault():
    graph = {"1": {"class_type": "PoseAnimateLoadPoseDetector", "inputs": {"backend": "nope", "dwpose_detector": "a.onnx",
                                                                      "dwpose_model": "b.onnx"}}}
    with pytest.raises(executor.GraphError, match=r"node 1 \(PoseAnimateLoadPoseDetector\): backend='nope'"):
        executor.Executor().run(graph)
    with pytest.raises(executor.GraphError, match="no node class 'Missing'"):
        executor.Executor().run({"1": {"class_type": "Missing", "inputs": {}}})


def test_ctrl_c_stops_cleanly_and_leaves_no_output(tmp_path):
    """SIGINT in the middle of pose detection: exit 130, nothing in the output folder."""
    ref, drive = write_media(tmp_path, frames=120)
    request = tmp_path / "r.json"
    request.write_text(json.dumps({"endpoint": "pose", "image_url": ref, "video_url": drive}))
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, str(ROOT / "animate.py"), str(request), "--out", str(out)],
                            stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=tmp_path)
    seen = []
    started = threading.Event()

    def watch():
        for chunk in iter(lambda: proc.stderr.read(64), ""):
            seen.append(chunk)
            if "/120" in "".join(seen[-3:]):
                started.set()

    threading.Thread(target=watch, daemon=True).start()
    assert started.wait(120), "".join(seen)[-2000:]
    time.sleep(0.5)
    os.kill(proc.pid, signal.SIGINT)
    assert proc.wait(60) == 130, "".join(seen)[-2000:]
    assert "stopped cleanly" in "".join(seen)
    assert [p for p in out.rglob("*") if p.is_file()] == []


def test_kept_loaders_are_reused_and_replaced_per_class():
    import poseanimate

    spec = poseanimate.NODE_CLASS_MAPPINGS["PoseAnimateAnimateDiffContextOptions"].INPUT_TYPES()["required"]
    defaults = {k: s[1]["default"] if len(s) > 1 and "default" in s[1] else s[0][0] for k, s in spec.items()}
    options = {"1": {"class_type": "PoseAnimateAnimateDiffContextOptions", "inputs": defaults}}
    ex = executor.Executor(keep_loaders=True)
    first = ex.run(options)["1"][0]
    assert ex.run(options)["1"][0] is first and ex.reused == ["1"]
    options["1"]["inputs"]["context_length"] = 8
    second = ex.run(options)["1"][0]
    assert second is not first and list(ex.loaded.values()) == [(second,)]


def _animate_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("animate_cli", ROOT / "animate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_pose_demo_reads_mediapipe_task_files_from_pose_models_and_names_them(tmp_path, monkeypatch, capsys):
    """mediapipe >= 1.x (Python 3.13) has no bundled model: the demo looks in --pose-models and says what to put there."""
    pytest.importorskip("mediapipe.tasks.python", reason="mediapipe's Tasks API (requirements-demo.txt)")
    from poseanimate.pose import mediapipe_pose

    monkeypatch.setattr(mediapipe_pose, "has_legacy_solutions", lambda: False)
    empty = tmp_path / "pose_models"
    empty.mkdir()
    code = _animate_module().main(["--pose-models", str(empty), "--frames", "2", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("error: ") and "Traceback" not in err, err
    assert str(empty) in err and ".task" in err, err
    assert not (tmp_path / "out").exists()


def test_pose_demo_names_a_reference_it_cannot_read(tmp_path, capsys):
    missing = tmp_path / "nobody_here.png"
    code = _animate_module().main(["--reference", str(missing), "--frames", "2", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 1 and str(missing) in err and "PNG or JPEG" in err, err


@pytest.mark.parametrize("backend,expected", [
    ("dwpose (onnx)", {"dwpose_detector", "dwpose_model"}),
    ("vitpose (onnx)", {"vitpose_detector", "vitpose_model"}),
    ("auto: vitpose (One-to-All)", set()),  # falls back to the embedded detector by itself
    ("mediapipe (embedded)", set()),
])
def test_a_detectors_files_count_only_for_its_backend(backend, expected):
    inputs = {"backend": backend, "dwpose_detector": "yolox_l.onnx", "dwpose_model": "dw-ll_ucoco_384.onnx",
              "vitpose_detector": "yolov10m.onnx", "vitpose_model": "vitpose_h_wholebody.onnx"}
    found = job.model_files({"4": {"class_type": "PoseAnimateLoadPoseDetector", "inputs": inputs}})
    assert {m.input for m in found} == expected and all(m.kind == "pose_models" for m in found)


def test_a_video_without_frames_is_one_error_line_naming_the_file(media, tmp_path, capsys):
    """The headless Load Video reads through pose/video_io.py: an empty upload says what it is, no traceback."""
    import av

    empty = tmp_path / "cut_off.mp4"
    with av.open(str(empty), "w", format="mp4") as container:  # a header, then nothing: an upload cut off
        stream = container.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        container.start_encoding()
    request = tmp_path / "r.json"
    request.write_text(json.dumps({"endpoint": "pose", "image_url": media[0], "video_url": str(empty)}))
    code = _animate_module().main([str(request), "--out", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err
    assert code != 0 and "Traceback" not in err, err
    assert "has no video stream (0 frames" in err and "plays" in err and "request field(s): video_url" in err, err
    assert not [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
