"""The pack inside a real ComfyUI server (opt-in: COMFYUI_DIR, optional COMFYUI_PYTHON).

One server per module (tests/comfyui_server.py): ``--cpu`` on a free loopback port, the
pack linked in through ``extra_model_paths.yaml``, model folders pointing at tiny generated
weights. Checked: the pack imports with no error and registers every node with the inputs
its classes declare; every ``workflows/api/*.json`` runs from uploaded inputs to an mp4 of
the right frame count, size and fps, with progress messages; every UI-format workflow
converts (comfy-cli) to its API twin; ``/interrupt`` stops a running job and the server keeps
working; bad prompts get a 400 or a clear ``execution_error``; the template browser lists
the workflows.

Generic on purpose, so later workflows are picked up by dropping files in workflows/:
* inputs: every ``LoadImage`` gets the uploaded reference picture, every ``LoadVideo`` the
  uploaded driving clip;
* weights: every ``tests/*tiny*.py`` module with ``write_tiny_models(models_dir)`` fills the
  temp models dir (one sub-folder per ComfyUI folder name, files named exactly as the
  workflows name them); every sub-folder is mapped in extra_model_paths.yaml;
* expected video: frames = driving frames after PoseAnimatePrepareDrivingVideo's settings,
  size = the reference's, fps = CreateVideo's (the clip's when wired from Get Video Components,
  divided by select_every_nth when wired from PoseAnimatePrepareDrivingVideo); a workflow that changes these states its own in the SaveVideo node's
  ``_meta.poseanimate_expect`` = {"frames": n, "width": w, "height": h, "fps": f}.

The workflow-file checks at the end need no ComfyUI and always run.
"""
from __future__ import annotations

import atexit
import copy
import functools
import importlib
import io
import json
import math
import os
import re
import shutil
import tempfile
import threading
import time
import urllib.parse
from collections import Counter
from pathlib import Path

import pytest

from comfyui_server import ENABLE_HINT, PACK_NAME, ComfyServer, comfyui_location, convert_ui_workflow
from paths import api_twin

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
WORKFLOWS = ROOT / "workflows"
API_WORKFLOWS = sorted((WORKFLOWS / "api").glob("*.json"))
UI_WORKFLOWS = sorted(WORKFLOWS.glob("*.json"))
LOCATION = comfyui_location()
needs_comfyui = pytest.mark.skipif(LOCATION is None, reason=ENABLE_HINT)

# Test inputs: a non-square reference (catches width/height swaps) and a short clip of another size.
REF_W, REF_H = 256, 320
CLIP_W, CLIP_H, CLIP_FRAMES, CLIP_FPS = 320, 400, 8, 12
LONG_CLIP_FRAMES = 96  # the interrupt test needs a job that is still running when cancelled


# --------------------------------------------------------------------------- fixtures
def _write_pose_models(models: Path) -> None:
    """Tiny DWPose and ViTPose stand-ins (real file names and I/O signatures) for the pose_models
    folder, so the shipped workflows' ``auto`` detectors take the ONNX path in real ComfyUI."""
    import tiny_onnx

    folder = models / "pose_models"
    folder.mkdir(parents=True, exist_ok=True)
    tiny_onnx.build_detector(folder / "yolox_l.onnx", [(200, 60, 440, 580, 0.95, 0, 0.95)])
    points = [(40 + (k % 12) * 18, 30 + (k // 12) * 28) for k in range(tiny_onnx.NUM_KP)]
    tiny_onnx.build_pose_onehot(folder / "dw-ll_ucoco_384.onnx", points, [0.9] * tiny_onnx.NUM_KP)
    tiny_onnx.build_yolov10(folder / "yolov10m.onnx", [(200, 60, 440, 580, 0.95, 0)])
    peaks = [(8 + (k % 12) * 2.7, 6 + (k // 12) * 4.6, 0.9) for k in range(tiny_onnx.NUM_KP)]
    tiny_onnx.build_vitpose_peaks(folder / "vitpose_h_wholebody.onnx", peaks)
    tiny_onnx.write_corrupt(folder / "corrupt.onnx")


def _tiny_writers():
    """(name, write_tiny_models) of every tests/*tiny*.py module that defines one."""
    found, errors = [], {}
    for path in sorted(TESTS.glob("*tiny*.py")):
        try:
            module = importlib.import_module(path.stem)
        except Exception as exc:  # noqa: BLE001 - reported in failures, never hidden
            errors[path.stem] = f"import failed: {exc!r}"
            continue
        writer = getattr(module, "write_tiny_models", None)
        if callable(writer):
            found.append((path.stem, writer))
    return found, errors


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """The temp models dir and a dict of writer errors (shown when a workflow fails)."""
    models = tmp_path_factory.mktemp("comfy_models")
    from poseanimate.nodes import host

    for kind in host.NEW_FOLDERS:
        (models / kind).mkdir(exist_ok=True)
    writers, errors = _tiny_writers()
    writers.insert(0, ("pose (tiny DWPose ONNX)", _write_pose_models))
    for name, writer in writers:
        try:
            writer(models)
        except Exception as exc:  # noqa: BLE001
            errors[name] = f"write_tiny_models failed: {exc!r}"
    return models, errors


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_models):
    if LOCATION is None:
        pytest.skip(ENABLE_HINT)
    pytest.importorskip("websocket", reason="the harness follows /ws with websocket-client: pip install websocket-client")
    comfy_dir, python = LOCATION
    srv = ComfyServer(comfy_dir, python, tmp_path_factory.mktemp("comfy_root"), tiny_models[0])
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def object_info(server):
    return server.get_json("/object_info", timeout=120)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """Generated reference picture and driving clips (from images scikit-image ships)."""
    import cv2
    from PIL import Image

    from poseanimate.pose import sample_media, video_io

    out = tmp_path_factory.mktemp("comfy_media")
    ref = sample_media.sample_reference_image()  # 512x512 astronaut
    ref = cv2.resize(ref[:, 51:461], (REF_W, REF_H), interpolation=cv2.INTER_AREA)  # 410x512 crop, 4:5
    Image.fromarray(ref).save(out / "poseanimate_reference.png")
    for name, count in (("driving", CLIP_FRAMES), ("long", LONG_CLIP_FRAMES)):
        clip = sample_media.sample_driving_clip(count, (CLIP_W, CLIP_H))
        video_io.write_mp4(out / f"poseanimate_{name}.mp4", clip, CLIP_FPS)
    return out


@pytest.fixture(scope="module")
def uploaded(server, media):
    return {name: server.upload(media / f"poseanimate_{name}.{ext}")
            for name, ext in (("reference", "png"), ("driving", "mp4"), ("long", "mp4"))}


# --------------------------------------------------------------------------- helpers
def _pack_nodes() -> dict:
    import poseanimate

    return dict(poseanimate.NODE_CLASS_MAPPINGS)


def _with_inputs(prompt: dict, image: str, video: str) -> dict:
    """Point every LoadImage at the uploaded reference and every LoadVideo at the clip.

    A node may carry ``_meta.poseanimate_test_overrides`` (e.g. 2 steps instead of 30): tiny
    weights on a CPU server would otherwise spend minutes on the shipped defaults.
    """
    prompt = copy.deepcopy(prompt)
    for node in prompt.values():
        node["inputs"].update(node.get("_meta", {}).get("poseanimate_test_overrides", {}))
        if node["class_type"] == "LoadImage":
            node["inputs"]["image"] = image
        elif node["class_type"] == "LoadVideo":
            node["inputs"]["file"] = video
    return prompt


def _expected_video(prompt: dict, save_id: str) -> dict:
    """Frames, size and fps the saved video must have (rules in the module docstring)."""
    expect = dict(prompt[save_id].get("_meta", {}).get("poseanimate_expect", {}))
    frames = CLIP_FRAMES
    for node in prompt.values():
        if node["class_type"] == "PoseAnimatePrepareDrivingVideo":
            i = node["inputs"]
            frames = math.ceil(max(frames - int(i.get("skip_first_frames", 0)), 0) / int(i.get("select_every_nth", 1)))
            if int(i.get("max_frames", 0)):
                frames = min(frames, int(i["max_frames"]))
    expect.setdefault("frames", frames)
    expect.setdefault("width", REF_W)
    expect.setdefault("height", REF_H)
    if "fps" not in expect:
        video_src = prompt[save_id]["inputs"]["video"][0]
        if prompt[video_src]["class_type"] == "CreateVideo":
            fps = prompt[video_src]["inputs"]["fps"]
            if not isinstance(fps, list):
                expect["fps"] = float(fps)
            elif prompt[str(fps[0])]["class_type"] in ("GetVideoComponents", "PoseAnimateVideoComponents"):
                expect["fps"] = float(CLIP_FPS)  # the driving clip's own rate
            elif prompt[str(fps[0])]["class_type"] == "PoseAnimatePrepareDrivingVideo":
                nth = int(prompt[str(fps[0])]["inputs"].get("select_every_nth", 1))
                expect["fps"] = float(CLIP_FPS) / nth  # the rate of the frames kept
    return expect


def _probe_video(data: bytes) -> dict:
    import av

    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(stream))
        return {"frames": frames, "width": stream.codec_context.width, "height": stream.codec_context.height,
                "fps": float(stream.average_rate or stream.guessed_rate), "codec": stream.codec_context.name}


def _canonical(prompt: dict) -> Counter:
    """The prompt as a multiset of node signatures that ignore node ids and titles."""
    memo: dict[str, str] = {}

    def sig(node_id: str, depth: int = 0) -> str:
        if node_id in memo:
            return memo[node_id]
        if depth > 200:
            raise ValueError("cycle in prompt")
        node = prompt[node_id]
        parts = []
        for name, value in sorted(node["inputs"].items()):
            if isinstance(value, list) and len(value) == 2 and str(value[0]) in prompt:
                parts.append(f"{name}=<{sig(str(value[0]), depth + 1)}>[{int(value[1])}]")
            else:
                parts.append(f"{name}={json.dumps(value, sort_keys=True)}")
        memo[node_id] = f"{node['class_type']}({', '.join(parts)})"
        return memo[node_id]

    return Counter(sig(str(k)) for k in prompt)


def _pose_prompt(image: str, video: str, **node_inputs) -> dict:
    """A small pose graph for targeted checks: load, detect, render, preview.

    ``node_inputs`` maps a node id to input overrides ({"5": {"batch_size": 0}}).
    """
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": image}},
        "2": {"class_type": "LoadVideo", "inputs": {"file": video}},
        "3": {"class_type": "PoseAnimateVideoComponents", "inputs": {"video": ["2", 0]}},
        "4": {"class_type": "PoseAnimateLoadPoseDetector",
              "inputs": {"backend": "mediapipe (embedded)", "dwpose_detector": "yolox_l.onnx",
                         "dwpose_model": "dw-ll_ucoco_384.onnx"}},
        "5": {"class_type": "PoseAnimateDetectPoses",
              "inputs": {"images": ["3", 0], "detector": ["4", 0], "person": "largest",
                         "missing_frames": "hold_last", "batch_size": 4}},
        "6": {"class_type": "PoseAnimateRenderPoses",
              "inputs": {"poses": ["5", 0], "style": "openpose", "width": 0, "height": 0, "draw_body": True,
                         "draw_hands": True, "draw_face": True, "face_change": True, "head_change": False}},
        "7": {"class_type": "PreviewImage", "inputs": {"images": ["6", 0]}},
    }
    for node_id, overrides in node_inputs.items():
        prompt[node_id]["inputs"].update(overrides)
    return prompt


def _fail_context(server, tiny_models) -> str:
    errors = tiny_models[1]
    extra = f"\ntiny weight writers that failed: {errors}" if errors else ""
    return f"{extra}\n--- ComfyUI log tail ---\n{server.log_tail(4000)}"


# Folder kinds a probe file is put in when finding folder-backed combos (plus the pack's own
# kinds and every lower-case word literal in nodes/*.py).
_PROBE_KINDS = ("checkpoints", "vae", "loras", "clip_vision", "text_encoders", "clip", "diffusion_models", "unet",
                "controlnet", "embeddings", "upscale_models", "model_patches")


@functools.lru_cache(maxsize=1)
def _probe_roots() -> tuple[str, str]:
    """An empty models/input root and one with a probe file in every candidate folder kind."""
    from poseanimate.nodes import host

    kinds = set(_PROBE_KINDS) | set(host.NEW_FOLDERS)
    for src in (ROOT / "nodes").glob("*.py"):  # any lower-case word literal may be a folder kind
        kinds |= set(re.findall(r"[\"']([a-z][a-z0-9_]{2,40})[\"']", src.read_text()))
    empty, probe = tempfile.mkdtemp(prefix="pa_empty_"), tempfile.mkdtemp(prefix="pa_probe_")
    atexit.register(shutil.rmtree, empty, True)
    atexit.register(shutil.rmtree, probe, True)
    for kind in kinds:
        (Path(probe) / kind).mkdir()
        for ext in (".safetensors", ".onnx", ".pth", ".ckpt", ".gguf"):
            (Path(probe) / kind / f"zz_probe{ext}").write_bytes(b"")
    for ext in (".json", ".png", ".mp4"):
        (Path(probe) / f"zz_probe{ext}").write_bytes(b"")
    return empty, probe


@functools.lru_cache(maxsize=None)
def _folder_backed_inputs(cls) -> frozenset[str]:
    """Inputs whose combo options come from model/input folders: they change when a probe file
    appears there (such inputs are compared by kind only; their lists depend on the machine)."""
    keep = {k: os.environ.get(k) for k in ("POSEANIMATE_MODELS_DIR", "POSEANIMATE_INPUT_DIR")}
    specs = []
    try:
        for root in _probe_roots():
            os.environ["POSEANIMATE_MODELS_DIR"] = os.environ["POSEANIMATE_INPUT_DIR"] = root
            specs.append(json.loads(json.dumps(cls.INPUT_TYPES())))
    finally:
        for k, v in keep.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    a, b = specs
    return frozenset(name for sec in a for name in a[sec] if a[sec][name] != b.get(sec, {}).get(name))


# --------------------------------------------------------------------------- server tests
@needs_comfyui
def test_pack_imports_inside_comfyui(server):
    log = server.log_text()
    failed = [line for line in log.splitlines()
              if PACK_NAME in line and ("IMPORT FAILED" in line or "Cannot import" in line)]
    assert not failed, f"ComfyUI could not import the pack:\n{server.log_tail()}"
    assert re.search(rf"seconds: .*{re.escape(PACK_NAME)}\s*$", log, re.M), f"pack not in the import list:\n{server.log_tail()}"
    skipped_families = re.findall(r"PoseAnimate: (\w+) nodes not loaded: (.*)", log)
    assert not skipped_families, f"node families skipped inside ComfyUI: {skipped_families}"
    print(f"\nComfyUI up in {server.start_seconds:.1f}s")


@needs_comfyui
def test_every_node_registered_with_declared_inputs(server, object_info):
    nodes = _pack_nodes()
    assert nodes, "the pack declares no nodes"
    missing = sorted(set(nodes) - set(object_info))
    assert not missing, f"nodes missing from /object_info: {missing}" + _fail_context(server, ({}, {}))
    import poseanimate

    problems = []
    for node_id, cls in nodes.items():
        info = object_info[node_id]
        declared = json.loads(json.dumps(cls.INPUT_TYPES()))
        dynamic = _folder_backed_inputs(cls)
        hosted = set(getattr(cls, "HOST_DEPENDENT_INPUTS", ()))  # combos that list ComfyUI's own choices when hosted
        for section in ("required", "optional"):
            want, got = declared.get(section, {}), info["input"].get(section, {})
            if list(want) != list(got):
                problems.append(f"{node_id}.{section}: inputs {list(got)} != declared {list(want)}")
                continue
            for name, spec in want.items():
                if name in dynamic:
                    # folder-dependent combo: same kind, every file the tiny folders hold is offered
                    if not isinstance(got[name][0], list):
                        problems.append(f"{node_id}.{name}: expected a combo, got {got[name][0]!r}")
                    continue
                if name in hosted:
                    if not (isinstance(got[name][0], list) and set(spec[0]) <= set(got[name][0])):
                        problems.append(f"{node_id}.{name}: {got[name][0]} does not offer the built-in {spec[0]}")
                    continue
                if got[name] != spec:
                    problems.append(f"{node_id}.{name}: {got[name]} != declared {spec}")
        if info["output"] != list(cls.RETURN_TYPES):
            problems.append(f"{node_id}: outputs {info['output']} != {list(cls.RETURN_TYPES)}")
        if getattr(cls, "RETURN_NAMES", None) and info["output_name"] != list(cls.RETURN_NAMES):
            problems.append(f"{node_id}: output names {info['output_name']} != {list(cls.RETURN_NAMES)}")
        if info["category"] != cls.CATEGORY or not cls.CATEGORY.startswith("PoseAnimate/"):
            problems.append(f"{node_id}: category {info['category']!r}")
        if info["display_name"] != poseanimate.NODE_DISPLAY_NAME_MAPPINGS.get(node_id, node_id):
            problems.append(f"{node_id}: display name {info['display_name']!r}")
    assert not problems, "\n".join(problems)


def _readme_node_rows() -> dict[str, tuple[list[str], dict[str, list[str]]]]:
    """README tables headed ``| node | inputs | outputs |``: node id -> (input names, documented
    combo choices). An input is its leading word; ``(`a` / `b`)`` after it lists choices."""
    readme = ROOT / "README.md"
    rows: dict = {}
    if not readme.exists():
        return rows
    in_table = False
    for line in readme.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("|") else []
        if not cells:
            in_table = False
            continue
        if [c.lower() for c in cells[:2]] == ["node", "inputs"]:
            in_table = True
            continue
        match = re.fullmatch(r"`(PoseAnimate\w+)`", cells[0]) if in_table else None
        if not match:
            continue
        names, choices, depth, item = [], {}, 0, ""
        for ch in cells[1] + ",":
            depth += (ch == "(") - (ch == ")")
            if ch == "," and depth == 0:
                name = re.match(r"\s*(\w+)", item)
                if name:
                    names.append(name.group(1))
                    paren = re.search(r"\((.*)\)\s*$", item)
                    if paren and re.fullmatch(r"\s*`[^`]+`(\s*/\s*`[^`]+`)+\s*", paren.group(1)):
                        choices[name.group(1)] = re.findall(r"`([^`]+)`", paren.group(1))
                item = ""
            else:
                item += ch
        rows[match.group(1)] = (names, choices)
    return rows


def _readme_mismatches(inputs_of) -> list[str]:
    """Compare the README's node table with ``inputs_of(node_id)`` -> {"required": .., "optional": ..}."""
    problems = []
    for node_id, (names, choices) in _readme_node_rows().items():
        spec = inputs_of(node_id)
        if spec is None:
            problems.append(f"README documents {node_id}, which does not exist")
            continue
        actual = {**spec.get("required", {}), **spec.get("optional", {})}
        if sorted(names) != sorted(actual):
            problems.append(f"{node_id}: README inputs {names} != node inputs {list(actual)}")
        for name, values in choices.items():
            options = actual.get(name, [None])[0]
            if not isinstance(options, list) or set(values) != set(options):
                problems.append(f"{node_id}.{name}: README choices {values} != {options}")
    return problems


@needs_comfyui
def test_readme_node_table_matches_server(object_info):
    """Every node row of the README describes the inputs (and choices) the live server shows."""
    if not _readme_node_rows():
        pytest.skip("README.md has no `| node | inputs | outputs |` table")
    problems = _readme_mismatches(lambda n: object_info[n]["input"] if n in object_info else None)
    assert not problems, "\n".join(problems)


@needs_comfyui
def test_pose_models_folder_lists_tiny_weights(server, object_info, tiny_models):
    """extra_model_paths.yaml reached the pack's own folder kind (pose_models)."""
    options = object_info["PoseAnimateLoadPoseDetector"]["input"]["required"]["dwpose_detector"][0]
    assert "yolox_l.onnx" in options and "corrupt.onnx" in options, f"{options} {tiny_models[1]}"


@needs_comfyui
def test_workflow_templates_listed(server):
    listed = server.get_json("/api/workflow_templates")
    assert sorted(listed.get(PACK_NAME, [])) == sorted(p.stem for p in UI_WORKFLOWS), listed


@functools.lru_cache(maxsize=1)
def _frontend_thumbnail_rule(python: str) -> tuple[str, str]:
    """(URL template, image extension) the installed ComfyUI frontend uses for custom-node template
    thumbnails, read from its own bundle (comfyui_frontend_package in ComfyUI's interpreter)."""
    import subprocess

    found = subprocess.run([python, "-c", "import comfyui_frontend_package as f, os; print(os.path.dirname(f.__file__))"],
                           capture_output=True, text=True, timeout=60)
    if found.returncode != 0:
        pytest.skip(f"ComfyUI's interpreter has no comfyui_frontend_package: {found.stderr[-300:]}")
    url = ext = None
    for js in sorted(Path(found.stdout.strip(), "static", "assets").glob("*.js")):
        text = js.read_text(errors="replace")
        if "workflow_templates" not in text:
            continue
        url = url or re.search(r"apiURL\(\s*`(/workflow_templates/\$\{\w+\}/\$\{\w+\.name\})`", text)
        ext = ext or re.search(r"name:\s*\w+,\s*mediaType:\s*\"image\",\s*mediaSubtype:\s*\"(\w+)\"", text)
    assert url and ext, "cannot find how this frontend names custom-node template thumbnails; update this test"
    return url.group(1), ext.group(1)


@needs_comfyui
@pytest.mark.parametrize("workflow", UI_WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_template_served(server, workflow):
    quoted = urllib.parse.quote(workflow.stem)
    status, body = server.request("GET", f"/api/workflow_templates/{PACK_NAME}/{quoted}.json")
    assert status == 200 and json.loads(body) == json.loads(workflow.read_text())
    # the thumbnail URL exactly as the frontend builds it: apiURL(`/workflow_templates/${module}/${name}`) + .ext
    url, ext = _frontend_thumbnail_rule(str(server.python))
    path = "/api" + re.sub(r"\$\{\w+\.name\}", quoted, re.sub(r"\$\{\w+\}", PACK_NAME, url, count=1)) + f".{ext}"
    status, body = server.request("GET", path)
    magic = {"jpg": b"\xff\xd8\xff", "jpeg": b"\xff\xd8\xff", "png": b"\x89PNG", "webp": b"RIFF"}.get(ext, b"")
    assert status == 200 and body.startswith(magic), f"the frontend requests {path}: HTTP {status}, {body[:8]!r}"


@needs_comfyui
@pytest.mark.parametrize("workflow", API_WORKFLOWS, ids=lambda p: p.stem)
def test_api_workflow_runs(server, uploaded, media, tiny_models, workflow):
    # The clip under a name of this workflow's own: ComfyUI caches node outputs across prompts, and
    # nodes another workflow already ran with the same inputs would not run (nor report progress).
    driving = server.upload(media / "poseanimate_driving.mp4", f"poseanimate_driving_{workflow.stem}.mp4")
    prompt = _with_inputs(json.loads(workflow.read_text()), uploaded["reference"], driving)
    result = server.run(prompt, timeout=480)
    assert result.status == "success", f"{workflow.name}: {result.error_text()}" + _fail_context(server, tiny_models)
    print(f"\n{workflow.stem}: {result.seconds:.1f}s")
    ours = {k for k, n in prompt.items() if n["class_type"].startswith("PoseAnimate")}
    progress = [e for e in result.events("progress") if str(e.get("node")) in ours]
    assert progress, f"no progress messages from the pack's nodes ({sorted(ours)})"
    assert all(0 <= e["value"] <= e["max"] for e in progress)
    outputs = result.history["outputs"]
    saves = [k for k, n in prompt.items() if n["class_type"] == "SaveVideo"]
    assert saves, f"{workflow.name} saves no video"
    for save_id in saves:
        entries = outputs.get(save_id, {}).get("images", [])  # SaveVideo reports under "images"
        assert len(entries) == 1, f"SaveVideo {save_id} output: {outputs.get(save_id)}"
        assert entries[0]["filename"].endswith(".mp4")
        got = _probe_video(server.download(entries[0]))
        want = _expected_video(prompt, save_id)
        for key, value in want.items():
            assert got[key] == pytest.approx(value, abs=0.01), f"{workflow.stem} video {key}: {got} vs expected {want}"
        print(f"{workflow.stem} -> {entries[0]['filename']}: {got}")
    for node_id, node in prompt.items():
        if node["class_type"] == "PoseAnimateSavePoseJSON":
            text = outputs[node_id]["text"][0]
            data = json.loads((server.output_dir / text).read_text())
            assert len(data) == _expected_video(prompt, saves[0])["frames"]


@needs_comfyui
@pytest.mark.parametrize("workflow", UI_WORKFLOWS, ids=lambda p: p.stem)
def test_ui_workflow_converts_to_api_twin(server, object_info, workflow):
    twin = api_twin(workflow)
    assert twin.exists(), f"{workflow.name} has no API twin in workflows/api/"
    try:
        converted = convert_ui_workflow(json.loads(workflow.read_text()), object_info, server.python)
    except ImportError as exc:
        pytest.skip(str(exc))
    want, got = _canonical(json.loads(twin.read_text())), _canonical(converted)
    assert got == want, ("UI workflow and API twin differ:\n only in UI: "
                         + "\n  ".join(sorted((got - want).elements())) + "\n only in API: "
                         + "\n  ".join(sorted((want - got).elements())))


@needs_comfyui
def test_interrupt_keeps_server_healthy(server, uploaded):
    prompt = _pose_prompt(uploaded["reference"], uploaded["long"], **{"5": {"batch_size": 1}})
    sent = threading.Event()

    def interrupt_on_progress(srv, prompt_id, msg):
        if msg.get("type") == "progress" and str(msg["data"].get("node")) == "5" and not sent.is_set():
            sent.set()
            status, _ = srv.post_json("/interrupt", {"prompt_id": prompt_id})
            assert status == 200

    t0 = time.perf_counter()
    result = server.run(prompt, timeout=300, on_message=interrupt_on_progress)
    assert sent.is_set(), "the job finished before any progress message; cannot test interrupt"
    kinds = [m["type"] for m in result.messages]
    assert "execution_interrupted" in kinds, f"not interrupted: {kinds[-5:]} {result.error_text()}"
    last = [e for e in result.events("progress") if str(e.get("node")) == "5"][-1]
    assert last["value"] < last["max"], "interrupt came after detection finished"
    assert server.healthy()
    rerun = server.run(prompt, timeout=300)
    assert rerun.status == "success", rerun.error_text()
    print(f"\ninterrupt round trip {time.perf_counter() - t0:.1f}s (rerun {rerun.seconds:.1f}s)")


BAD_PROMPTS = {
    # name: (node overrides, expected node_errors type)
    "unknown_model_file": ({"4": {"backend": "dwpose (onnx)", "dwpose_detector": "no_such_model.onnx"}}, "value_not_in_list"),
    "path_traversal_model": ({"4": {"backend": "dwpose (onnx)", "dwpose_model": "../../etc/passwd"}}, "value_not_in_list"),
    "batch_size_below_min": ({"5": {"batch_size": 0}}, "value_smaller_than_min"),
    "width_above_max": ({"6": {"width": 10 ** 6}}, "value_bigger_than_max"),
    "unknown_backend": ({"4": {"backend": "openpose (magic)"}}, "value_not_in_list"),
    "wrong_link_type": ({"6": {"poses": ["3", 0]}}, "return_type_mismatch"),
}


@needs_comfyui
@pytest.mark.parametrize("case", sorted(BAD_PROMPTS))
def test_bad_prompt_refused(server, uploaded, case):
    overrides, error_type = BAD_PROMPTS[case]
    status, body = server.submit(_pose_prompt(uploaded["reference"], uploaded["driving"], **overrides))
    assert status == 400, f"{case}: accepted ({status}) {body}"
    node_id = next(iter(overrides))
    errors = body["node_errors"][node_id]["errors"]
    assert any(e["type"] == error_type for e in errors), errors
    assert server.healthy()


@needs_comfyui
def test_missing_input_refused(server, uploaded):
    prompt = _pose_prompt(uploaded["reference"], uploaded["driving"])
    del prompt["5"]["inputs"]["detector"]
    status, body = server.submit(prompt)
    assert status == 400
    errors = body["node_errors"]["5"]["errors"]
    assert any(e["type"] == "required_input_missing" and "detector" in json.dumps(e) for e in errors), errors
    prompt["5"]["class_type"] = "PoseAnimateNoSuchNode"
    status, body = server.submit(prompt)
    assert status == 400 and "PoseAnimateNoSuchNode" in json.dumps(body)
    assert server.healthy()


def _anchor_past_end(image, video):
    prompt = _pose_prompt(image, video)
    prompt["8"] = {"class_type": "PoseAnimateAlignPoses",
                   "inputs": {"driving_poses": ["5", 0], "reference_pose": ["5", 0], "mode": "none", "anchor_frame": 5000}}
    prompt["6"]["inputs"]["poses"] = ["8", 0]
    return prompt


def _prefix_escapes_output(image, video):
    prompt = _pose_prompt(image, video)
    prompt["8"] = {"class_type": "PoseAnimateSavePoseJSON", "inputs": {"poses": ["5", 0], "filename_prefix": "../../escaped"}}
    return prompt


RUNTIME_ERRORS = {
    # name: (prompt builder, words the execution_error message must contain)
    "corrupt_onnx": (lambda i, v: _pose_prompt(i, v, **{"4": {"backend": "dwpose (onnx)", "dwpose_detector": "corrupt.onnx"}}),
                     ["corrupt.onnx"]),
    "anchor_past_end": (_anchor_past_end, ["anchor_frame"]),
    "prefix_escapes_output": (_prefix_escapes_output, ["filename_prefix"]),
}


@needs_comfyui
@pytest.mark.parametrize("case", sorted(RUNTIME_ERRORS))
def test_runtime_error_is_clear(server, uploaded, case):
    build, words = RUNTIME_ERRORS[case]
    result = server.run(build(uploaded["reference"], uploaded["driving"]), timeout=120)
    assert result.status == "error", f"{case}: expected an execution_error, got {result.status}"
    errors = result.events("execution_error")
    assert errors, [m["type"] for m in result.messages]
    message = errors[0]["exception_message"]
    assert all(w in message for w in words), f"{case}: unclear error {errors[0]['exception_type']}: {message}"
    assert not list(server.root.parent.glob("escaped*")), "a file was written outside the output folder"
    assert server.healthy()
    ok = server.run(_pose_prompt(uploaded["reference"], uploaded["driving"]), timeout=120)
    assert ok.status == "success", ok.error_text()


@needs_comfyui
def test_dwpose_backend_runs_in_comfyui(server, uploaded):
    """The ONNX backend resolves its files through ComfyUI's pose_models folder (tiny stand-ins)."""
    prompt = _pose_prompt(uploaded["reference"], uploaded["driving"], **{"4": {"backend": "dwpose (onnx)"}})
    result = server.run(prompt, timeout=120)
    assert result.status == "success", result.error_text()
    assert result.history["outputs"]["7"]["images"], "no preview images"


# --------------------------------------------------------------------------- workflow files (no ComfyUI)
def test_workflow_files_exist():
    assert UI_WORKFLOWS, "no workflows/*.json"
    assert set(API_WORKFLOWS) == {api_twin(p) for p in UI_WORKFLOWS}, "UI and API workflows do not pair up (tests/paths.py TEMPLATES)"


@pytest.mark.parametrize("workflow", UI_WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_has_twin_and_preview(workflow):
    from PIL import Image

    assert api_twin(workflow).exists(), f"{workflow.name}: no API twin {api_twin(workflow)}"
    preview = workflow.with_suffix(".jpg")  # what the frontend requests (test_workflow_template_served)
    assert preview.exists(), (f"{workflow.name}: no preview {preview.name} (the template browser's thumbnail; "
                              "add the template to scripts/template_previews.py and run it)")
    assert preview.stat().st_size < 300_000, f"{preview.name} is large"
    with Image.open(preview) as img:
        assert img.format == "JPEG" and max(img.size) <= 1024, img.size


_WIDGET_TYPES = {"INT": int, "FLOAT": (int, float), "STRING": str, "BOOLEAN": bool}
_CONTROL_VALUES = {"fixed", "increment", "decrement", "randomize"}


def _check_pack_widgets(wf: dict) -> None:
    """widgets_values of each pack node line up with its widget inputs (else the frontend
    shifts every value into the wrong widget on load): count, order, type, combo choice."""
    nodes = _pack_nodes()
    for node in wf["nodes"]:
        cls = nodes.get(node["type"])
        if cls is None:
            continue
        spec = cls.INPUT_TYPES()
        folder_backed = _folder_backed_inputs(cls)
        values = list(node.get("widgets_values") or [])
        where = f"node {node['id']} ({node['type']})"
        for section in ("required", "optional"):
            for name, entry in spec.get(section, {}).items():
                kind, opts = entry[0], (entry[1] if len(entry) > 1 else {})
                if opts.get("forceInput") or not (isinstance(kind, list) or kind in _WIDGET_TYPES):
                    continue  # a socket, not a widget
                assert values, f"{where}: no widgets_values left for {name}"
                value = values.pop(0)
                if isinstance(kind, list):
                    assert name in folder_backed or value in kind, f"{where}.{name}: {value!r} not in {kind}"
                else:
                    ok = isinstance(value, _WIDGET_TYPES[kind]) and not (kind != "BOOLEAN" and isinstance(value, bool))
                    assert ok, f"{where}.{name}: {value!r} is not {kind}"
                if kind == "INT" and values and values[0] in _CONTROL_VALUES and (
                        opts.get("control_after_generate") or name in ("seed", "noise_seed")):
                    values.pop(0)  # the frontend's "control after generate" companion value
        assert not values, f"{where}: {len(values)} widgets_values more than its widget inputs: {values}"


@pytest.mark.parametrize("workflow", UI_WORKFLOWS, ids=lambda p: p.stem)
def test_ui_workflow_links_consistent(workflow):
    """What drag-and-drop needs: each link matches both ends' slots and types, ids are unique."""
    wf = json.loads(workflow.read_text())
    nodes = {n["id"]: n for n in wf["nodes"]}
    assert len(nodes) == len(wf["nodes"]), "duplicate node ids"
    links = {link[0]: link for link in wf["links"]}
    assert len(links) == len(wf["links"]), "duplicate link ids"
    assert wf["last_node_id"] >= max(nodes) and wf["last_link_id"] >= max(links, default=0)
    for lid, src, src_slot, dst, dst_slot, typ in wf["links"]:
        out = nodes[src]["outputs"][src_slot]
        inp = nodes[dst]["inputs"][dst_slot]
        assert lid in (out["links"] or []), f"link {lid} not listed on node {src} output {src_slot}"
        assert inp["link"] == lid, f"link {lid} not on node {dst} input {dst_slot}"
        assert out["type"] == typ == inp["type"], f"link {lid} type {typ} vs {out['type']} -> {inp['type']}"
    for node in wf["nodes"]:
        for inp in node.get("inputs", []):
            assert inp["link"] is None or inp["link"] in links, f"node {node['id']} input {inp['name']}: dangling link"
        for out in node.get("outputs", []):
            for lid in out["links"] or []:
                assert links[lid][1] == node["id"], f"node {node['id']}: link {lid} starts elsewhere"
        assert len(node["pos"]) == 2 and len(node["size"]) == 2
    _check_pack_widgets(wf)
    api = json.loads(api_twin(workflow).read_text())
    ui_classes = Counter(n["type"] for n in wf["nodes"] if n["type"] not in ("Note", "MarkdownNote", "Reroute", "PrimitiveNode"))
    assert ui_classes == Counter(n["class_type"] for n in api.values())


@pytest.mark.parametrize("workflow", API_WORKFLOWS, ids=lambda p: p.stem)
def test_api_workflow_widgets_match_pack_nodes(workflow):
    """Every pack node in an API workflow sets exactly the inputs its class declares, in range."""
    nodes = _pack_nodes()
    prompt = json.loads(workflow.read_text())
    for node_id, node in prompt.items():
        cls = nodes.get(node["class_type"])
        if cls is None:
            assert not node["class_type"].startswith("PoseAnimate"), f"{node['class_type']} is not a pack node"
            continue
        spec = cls.INPUT_TYPES()
        required, optional = spec.get("required", {}), spec.get("optional", {})
        folder_backed = _folder_backed_inputs(cls)
        assert set(required) <= set(node["inputs"]), f"node {node_id}: missing {set(required) - set(node['inputs'])}"
        assert set(node["inputs"]) <= set(required) | set(optional), f"node {node_id}: unknown inputs"
        for name, value in node["inputs"].items():
            kind, opts = (required.get(name) or optional.get(name)) + ({},) * (2 - len(required.get(name) or optional.get(name)))
            if isinstance(value, list) or name in folder_backed:
                continue  # a link, or a file name that exists only on the user's machine
            if isinstance(kind, list):
                assert value in kind, f"node {node_id}.{name}: {value!r} not in {kind}"
            elif kind in ("INT", "FLOAT"):
                assert opts.get("min", -math.inf) <= value <= opts.get("max", math.inf), f"node {node_id}.{name}={value}"


def test_readme_node_table_matches_pack():
    """The same README check against the pack's own classes (no ComfyUI needed)."""
    if not _readme_node_rows():
        pytest.skip("README.md has no `| node | inputs | outputs |` table")
    nodes = _pack_nodes()
    problems = _readme_mismatches(lambda n: json.loads(json.dumps(nodes[n].INPUT_TYPES())) if n in nodes else None)
    # folder-backed combos list the user's files, not fixed choices: the README may not enumerate them
    assert not problems, "\n".join(problems)


# A loaded video grows its node: the frontend shows the clip below the widgets at the node's
# width and the clip's aspect. Room is kept for a phone video (1080x2179, about 1:2) plus the
# widgets, so the preview of an uploaded clip covers no other node.
VIDEO_PREVIEW_ASPECT, VIDEO_WIDGETS_HEIGHT, TITLE_HEIGHT = 2.1, 110, 30


def _node_box(node) -> tuple[float, float, float, float]:
    (x, y), (w, h) = node["pos"], node["size"]
    return x, y - TITLE_HEIGHT, x + w, y + h


@pytest.mark.parametrize("workflow", UI_WORKFLOWS, ids=lambda p: p.stem)
def test_video_preview_covers_no_node(workflow):
    wf = json.loads(workflow.read_text())
    problems = []
    for video in (n for n in wf["nodes"] if n["type"] == "LoadVideo"):
        x0, y0, x1, _ = _node_box(video)
        zone = (x0, y0, x1, video["pos"][1] + VIDEO_WIDGETS_HEIGHT + video["size"][0] * VIDEO_PREVIEW_ASPECT)
        for other in wf["nodes"]:
            if other is video:
                continue
            a0, b0, a1, b1 = _node_box(other)
            if a0 < zone[2] and zone[0] < a1 and b0 < zone[3] and zone[1] < b1:
                problems.append(f"node {other['id']} ({other['type']}) at {other['pos']} lies where the preview of a "
                                f"portrait clip loaded in node {video['id']} grows (x {zone[0]}..{zone[2]}, "
                                f"y up to {zone[3]:.0f})")
    boxes = [(n, _node_box(n)) for n in wf["nodes"]]
    for i, (a, (a0, b0, a1, b1)) in enumerate(boxes):
        for b, (c0, d0, c1, d1) in boxes[i + 1:]:
            if a0 < c1 and c0 < a1 and b0 < d1 and d0 < b1:
                problems.append(f"nodes {a['id']} ({a['type']}) and {b['id']} ({b['type']}) overlap")
    assert not problems, "\n".join(problems)


@needs_comfyui
@pytest.mark.parametrize("sampler,scheduler", [("dpmpp_2m_sde", "karras"), ("uni_pc", "beta")])
def test_animatediff_runs_comfyui_samplers(server, uploaded, media, tiny_models, sampler, scheduler):
    """Inside ComfyUI the AnimateDiff sampler offers ComfyUI's samplers/schedulers and runs them
    (through nodes/host.py); the progress bar ends exactly at its total (VAE batches + steps)."""
    wf = json.loads((WORKFLOWS / "api" / "animatediff_v2v.json").read_text())
    driving = server.upload(media / "poseanimate_driving.mp4", f"poseanimate_driving_ad_{sampler}.mp4")
    prompt = _with_inputs(wf, uploaded["reference"], driving)
    prompt["8"]["inputs"].update(sampler_name=sampler, scheduler=scheduler, steps=2)
    result = server.run(prompt, timeout=480)
    assert result.status == "success", f"{sampler}: {result.error_text()}" + _fail_context(server, tiny_models)
    progress = [e for e in result.events("progress") if str(e.get("node")) == "8"]
    assert progress and progress[-1]["value"] == progress[-1]["max"] == 1 + 2 + 1, progress
    assert [e["value"] for e in progress] == sorted(e["value"] for e in progress)
