"""The headless client (client.py): hosted request JSON -> ComfyUI job -> hosted output JSON.

Two halves:
* against a real ComfyUI (opt-in, COMFYUI_DIR; the server, tiny weights and media fixtures
  are the harness's own): the client runs each endpoint whose workflow file exists end to end,
  with media given as a local path, an http URL and a data URI, and the result JSON and video
  are checked; a real 400 is mapped back to the request field that caused it;
* against a local fake ComfyUI (no ComfyUI needed), only for the client's own error paths:
  unreachable / silent server, 400 mapping, execution_error, job timeout (and the cancel that
  follows), bad media, a server without the pack.
Plus table checks: every endpoint's request fields resolve to nodes of its workflow file.
"""
from __future__ import annotations

import base64
import functools
import http.server
import io
import json
import socket
import threading
import time
from pathlib import Path

import pytest

import client
from comfyui_server import ENABLE_HINT, comfyui_location
from test_comfyui_harness import CLIP_FRAMES, REF_H, REF_W, _expected_video, _probe_video
from test_comfyui_harness import media, server, tiny_models  # noqa: F401  (fixtures, one server per module)

ROOT = Path(__file__).resolve().parents[1]
needs_comfyui = pytest.mark.skipif(comfyui_location() is None, reason=ENABLE_HINT)
POSE_WORKFLOW = json.loads((ROOT / "workflows" / "api" / "pose_alignment.json").read_text())

# Minimal valid file heads for the client's content sniffing (the fake server never decodes them).
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
MP4 = b"\x00\x00\x00\x18ftypisom" + b"\x00" * 64


def _data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


# --------------------------------------------------------------------------- endpoint tables
@pytest.mark.parametrize("name", sorted(client.ENDPOINTS))
def test_endpoint_fields_resolve_in_workflow(name):
    """Every request field of the table lands on a node input of the endpoint's workflow."""
    endpoint = client.ENDPOINTS[name]
    path = client.WORKFLOWS / endpoint.workflow
    if not path.exists():
        pytest.skip(f"{path.relative_to(ROOT)} is not in this checkout yet")
    workflow = json.loads(path.read_text())
    unresolved = [f for f, targets in endpoint.fields.items() if not client._nodes_for(workflow, targets)]
    assert not unresolved, f"{name}: fields with no node in {path.name}: {unresolved}"
    assert set(endpoint.required) <= set(endpoint.fields)
    assert set(endpoint.media) <= set(endpoint.fields)


def test_fill_maps_fields_and_picks_seed():
    endpoint = client.ENDPOINTS["pose"]
    req = {"image_url": _data_uri(PNG, "image/png"), "video_url": _data_uri(MP4, "video/mp4"),
           "alignment": "one_to_all_pose", "style": "one_to_all", "max_frames": 5, "bogus": 1}
    warnings = []
    filled = client.fill_workflow(endpoint, POSE_WORKFLOW, req, warn=warnings.append)
    assert filled.prompt["8"]["inputs"]["mode"] == "one_to_all_pose"
    assert filled.prompt["9"]["inputs"]["style"] == "one_to_all"
    assert filled.prompt["5"]["inputs"]["max_frames"] == 5
    assert filled.origin[("8", "mode")] == "alignment" and filled.origin[("1", "image")] == "image_url"
    assert filled.uploads["image_url"].name.endswith(".png") and filled.uploads["video_url"].name.endswith(".mp4")
    assert filled.seed is None and POSE_WORKFLOW["8"]["inputs"]["mode"] == "unianimate", "template mutated"
    assert warnings and "bogus" in warnings[0]


def _ad_workflow():
    return {
        "1": {"class_type": "LoadVideo", "inputs": {"file": "x.mp4"}},
        "3": {"class_type": "PoseAnimateAnimateDiffLoader",
              "inputs": {"checkpoint": "sd15.safetensors", "lora_1": "None", "lora_1_scale": 1.0, "loras_json": ""}},
        "8": {"class_type": "PoseAnimateAnimateDiffSampler",
              "inputs": {"animatediff": ["3", 0], "prompt": "", "negative_prompt": "", "steps": 25, "guidance": 7.0,
                         "seed": 0, "select_every_nth_frame": 2}},
    }


def test_fill_animatediff_models_and_loras():
    options = {("PoseAnimateAnimateDiffLoader", "checkpoint"): ["cardosAnime_v20.safetensors", "dark.safetensors"],
               ("PoseAnimateAnimateDiffLoader", "lora_1"): ["None", "sub/Style-LoRA.safetensors"]}
    req = {"video_url": _data_uri(MP4, "video/mp4"), "prompt": "a dancer", "num_inference_steps": 8,
           "guidance_scale": 5, "base_model": "cardosAnimev20", "seed": 42, "select_every_nth_frame": 1,
           "loras": [{"path": "style_lora", "scale": 0.6}, {"path": "sub/Style-LoRA.safetensors"}]}
    filled = client.fill_workflow(client.ENDPOINTS["animatediff-v2v"], _ad_workflow(), req,
                                  options_of=lambda c, i: options[(c, i)])
    loader, sampler = filled.prompt["3"]["inputs"], filled.prompt["8"]["inputs"]
    assert loader["checkpoint"] == "cardosAnime_v20.safetensors"
    assert json.loads(loader["loras_json"]) == [{"name": "sub/Style-LoRA.safetensors", "scale": 0.6},
                                                {"name": "sub/Style-LoRA.safetensors", "scale": 1.0}]
    assert (sampler["steps"], sampler["guidance"], sampler["seed"], sampler["select_every_nth_frame"]) == (8, 5, 42, 1)
    assert filled.seed == 42
    with pytest.raises(client.RequestError) as err:
        client.fill_workflow(client.ENDPOINTS["animatediff-v2v"], _ad_workflow(), {**req, "loras": [{"path": "nope"}]},
                             options_of=lambda c, i: options[(c, i)])
    assert set(err.value.fields) == {"loras[0].path"} and "models/loras" in str(err.value)
    with pytest.raises(client.RequestError) as err:
        client.fill_workflow(client.ENDPOINTS["animatediff-v2v"], _ad_workflow(), {**req, "base_model": "sdxl"},
                             options_of=lambda c, i: options[(c, i)])
    assert set(err.value.fields) == {"base_model"} and "cardosAnime_v20.safetensors" in str(err.value)


@pytest.mark.parametrize("path,kind", [("https://civitai.com/api/download/models/12345", "a URL"),
                                       ("https://huggingface.co/x/y/resolve/main/anime.safetensors", "a URL"),
                                       ("someone/anime-lora", "a Hugging Face hub name")])
def test_remote_lora_path_says_which_file_to_put_where(path, kind):
    """The hosted endpoint downloads loras[].path; the client never does and says what to do instead."""
    options = {("PoseAnimateAnimateDiffLoader", "lora_1"): ["None", "style.safetensors"]}
    req = {"video_url": _data_uri(MP4, "video/mp4"), "prompt": "x", "loras": [{"path": path, "scale": 0.7}]}
    with pytest.raises(client.RequestError) as err:
        client.fill_workflow(client.ENDPOINTS["animatediff-v2v"], _ad_workflow(), req, options_of=lambda c, i: options[(c, i)])
    text = str(err.value)
    assert set(err.value.fields) == {"loras[0].path"} and kind in text and "never downloads" in text
    assert "ComfyUI/models/loras/" in text and (".safetensors" in text.split("as ", 1)[1])


def test_working_size_and_frame_cap_fields():
    wf = _ad_workflow()
    wf["8"]["inputs"].update(short_side=512, max_frames=0)
    req = {"video_url": _data_uri(MP4, "video/mp4"), "prompt": "x", "short_side": 384, "max_frames": 48}
    filled = client.fill_workflow(client.ENDPOINTS["animatediff-v2v"], wf, req)
    assert (filled.prompt["8"]["inputs"]["short_side"], filled.prompt["8"]["inputs"]["max_frames"]) == (384, 48)


def test_random_seed_when_absent_and_bad_seed_named():
    endpoint = client.ENDPOINTS["animatediff-v2v"]
    req = {"video_url": _data_uri(MP4, "video/mp4"), "prompt": "x"}
    import random

    filled = client.fill_workflow(endpoint, _ad_workflow(), req, seed_rng=random.Random(3))
    assert filled.seed == random.Random(3).randrange(0, 2 ** 32) == filled.prompt["8"]["inputs"]["seed"]
    with pytest.raises(client.RequestError) as err:
        client.fill_workflow(endpoint, _ad_workflow(), {**req, "seed": "7"})
    assert set(err.value.fields) == {"seed"}


def test_missing_required_fields_named():
    with pytest.raises(client.RequestError) as err:
        client.fill_workflow(client.ENDPOINTS["animatediff-v2v"], _ad_workflow(), {"negative_prompt": "x"})
    assert set(err.value.fields) == {"prompt", "video_url"}
    assert err.value.exit_code == 2


def test_non_finite_numbers_named_and_empty_prompt_accepted():
    endpoint = client.ENDPOINTS["animatediff-v2v"]
    req = {"video_url": _data_uri(MP4, "video/mp4"), "prompt": "x"}
    for bad, field in (({"guidance_scale": float("nan")}, "guidance_scale"),
                       ({"loras": [{"path": "a", "scale": float("-inf")}]}, "loras[0].scale")):
        with pytest.raises(client.RequestError) as err:
            client.fill_workflow(endpoint, _ad_workflow(), {**req, **bad})
        assert set(err.value.fields) == {field} and "finite" in str(err.value)
    assert client.non_finite_numbers(client._read_request('{"a": [1, Infinity], "b": {"c": NaN}}')) .keys() == {"a[1]", "b.c"}
    filled = client.fill_workflow(endpoint, _ad_workflow(), {**req, "prompt": ""})
    assert filled.prompt["8"]["inputs"]["prompt"] == ""
    with pytest.raises(client.RequestError):
        client.fill_workflow(endpoint, _ad_workflow(), {**req, "video_url": ""})


def test_loose_model_match_is_announced():
    said = []
    name = client.match_model_name("base_model", "SD15-Anime", ["sd15_anime.safetensors"], "checkpoints", said.append)
    assert name == "sd15_anime.safetensors" and "using its file 'sd15_anime.safetensors'" in said[0]


def test_png_bit_depth():
    import zlib

    ihdr = lambda depth: b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + (8).to_bytes(4, "big") * 2 + bytes([depth, 0, 0, 0, 0])  # noqa: E731
    assert client.png_bit_depth(ihdr(16)) == 16 and client.png_bit_depth(ihdr(8)) == 8
    assert client.png_bit_depth(b"\xff\xd8\xff" + bytes(40)) is None and zlib


def test_failure_blames_the_field_the_message_is_about():
    """A failure in Align Poses: a message about the driving clip names video_url, one about
    the reference names image_url, one naming an input names that input's field."""
    wf = json.loads(json.dumps(POSE_WORKFLOW))
    filled = client.fill_workflow(client.ENDPOINTS["pose"], wf, {"image_url": _data_uri(PNG, "image/png"),
                                                                 "video_url": _data_uri(MP4, "video/mp4"),
                                                                 "anchor_frame": 0, "alignment": "unianimate"})
    align = next(k for k, n in wf.items() if n["class_type"] == "PoseAnimateAlignPoses")
    feeding = lambda text: client.fields_feeding(filled.prompt, filled.origin, align, text)  # noqa: E731
    assert feeding("no person found in any of the 4 driving frames: use a clip with a visible person") == (("video_url",), False)
    assert feeding("the reference pose has no person: use a reference image where the body is visible") == (("image_url",), False)
    assert feeding("anchor_frame 9 is past the last driving frame (3); use 0..3") == (("anchor_frame",), True)
    assert sorted(feeding("something broke")[0]) == ["alignment", "anchor_frame"]
    render = next(k for k, n in wf.items() if n["class_type"] == "PoseAnimateRenderPoses")
    fed, direct = client.fields_feeding(filled.prompt, filled.origin, render, "libx264 refuses odd sizes")
    assert not direct and {"image_url", "video_url"} <= set(fed), fed  # every upstream field, not the first level


def test_fixed_model_file_missing_names_the_folder():
    wf = {"1": {"class_type": "PoseAnimateWanVAELoader", "inputs": {"vae_name": "gone.safetensors", "precision": "bf16"}}}
    spec = {"vae_name": (["wan_2.1_vae.safetensors"], {"tooltip": "Wan2.1 VAE in models/vae"}),
            "precision": (["bf16", "fp32"], {})}
    with pytest.raises(client.ClientError, match=r"Put gone\.safetensors in ComfyUI/models/vae/"):
        client.check_fixed_values(wf, {}, lambda cls, inp: spec.get(inp, (None, {})), "x.json")
    client.check_fixed_values(wf, {("1", "vae_name"): "vae"}, lambda cls, inp: spec.get(inp, (None, {})), "x.json")


def test_field_without_node_names_field():
    wf = {k: v for k, v in POSE_WORKFLOW.items() if v["class_type"] != "PoseAnimateAlignPoses"}
    with pytest.raises(client.RequestError) as err:
        client.fill_workflow(client.ENDPOINTS["pose"], wf, {"image_url": _data_uri(PNG, "image/png"),
                                                            "video_url": _data_uri(MP4, "video/mp4"), "alignment": "none"})
    assert set(err.value.fields) == {"alignment"} and "PoseAnimateAlignPoses" in str(err.value)


@pytest.mark.parametrize("value, kind, words", [
    ("/no/such/file.png", client.IMAGE, "not a file"),
    ("data:image/png;base64", client.IMAGE, "malformed data URI"),
    ("data:image/png;base64,@@@not base64@@@", client.IMAGE, "does not decode"),
    (_data_uri(MP4, "video/mp4"), client.IMAGE, "takes an image"),
    (_data_uri(b"hello world, not a png", "image/png"), client.IMAGE, "does not hold an image"),
    (_data_uri(PNG, "application/octet-stream"), client.VIDEO, "does not hold a video"),
    (42, client.VIDEO, "must be a local path"),
])
def test_bad_media_named(value, kind, words):
    with pytest.raises(client.RequestError) as err:
        client.load_media("image_url" if kind == client.IMAGE else "video_url", value, kind)
    assert words in str(err.value)
    assert list(err.value.fields) == ["image_url" if kind == client.IMAGE else "video_url"]


def test_media_sources(tmp_path):
    path = tmp_path / "clip.mp4"
    path.write_bytes(MP4)
    from_path = client.load_media("video_url", str(path), client.VIDEO)
    from_file_url = client.load_media("video_url", path.as_uri(), client.VIDEO)
    from_uri = client.load_media("video_url", _data_uri(MP4, "video/mp4"), client.VIDEO)
    assert from_path.data == from_file_url.data == from_uri.data == MP4
    assert from_path.name.startswith("clip_") and from_path.name.endswith(".mp4") and from_uri.name.endswith(".mp4")
    gif = b"GIF89a" + b"\x00" * 20
    assert client.load_media("video_url", _data_uri(gif, "image/gif"), client.VIDEO).name.endswith(".gif")


# --------------------------------------------------------------------------- fake server
class FakeComfy:
    """Just enough of ComfyUI's HTTP API to drive the client's error paths."""

    def __init__(self, tmp: Path):
        self.mode = "ok"  # ok | invalid | error | hang
        self.missing_class: str | None = None
        self.calls: list[tuple[str, str, bytes]] = []
        self.uploads: list[str] = []
        self.media = {"/media/ref.png": (PNG, "image/png"), "/media/clip": (MP4, "video/mp4"),
                      "/media/wrong.png": (MP4, "video/mp4")}
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, status, payload, ctype="application/json"):
                body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                fake.calls.append(("GET", self.path, b""))
                path = self.path.split("?")[0]
                if path == "/system_stats":
                    return self._send(200, {"system": {}, "devices": []})
                if path.startswith("/object_info/"):
                    cls = path.rsplit("/", 1)[1]
                    return self._send(200, {} if cls == fake.missing_class else {cls: {"input": {"required": {}}}})
                if path == "/history/p1":
                    return self._send(200, fake.history())
                if path == "/queue":
                    return self._send(200, {"queue_running": [[0, "p1", {}, {}, []]], "queue_pending": []})
                if path == "/view":
                    return self._send(200, MP4, "video/mp4")
                if path in fake.media:
                    data, ctype = fake.media[path]
                    return self._send(200, data, ctype)
                return self._send(404, {"error": "not found"})

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                fake.calls.append(("POST", self.path, body))
                if self.path == "/upload/image":
                    name = body.split(b'filename="', 1)[1].split(b'"', 1)[0].decode()
                    fake.uploads.append(name)
                    return self._send(200, {"name": name, "subfolder": "", "type": "input"})
                if self.path == "/prompt":
                    if fake.mode == "invalid":
                        return self._send(400, fake.validation_body())
                    if fake.mode == "partial":  # some outputs refused, the rest queued
                        return self._send(200, {"prompt_id": "p1", "number": 0,
                                                "node_errors": fake.validation_body()["node_errors"]})
                    return self._send(200, {"prompt_id": "p1", "number": 0, "node_errors": {}})
                if self.path in ("/queue", "/interrupt"):
                    return self._send(200, {})
                return self._send(404, {"error": "not found"})

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.tmp = tmp

    def history(self):
        if self.mode == "hang":
            return {}
        if self.mode == "error":
            return {"p1": {"status": {"status_str": "error", "completed": False, "messages": [
                ["execution_start", {"prompt_id": "p1"}],
                ["execution_error", {"prompt_id": "p1", "node_id": "3", "node_type": "GetVideoComponents",
                                     "exception_type": "av.error.InvalidDataError",
                                     "exception_message": "Invalid data found when processing input"}]]},
                           "outputs": {}}}
        return {"p1": {"status": {"status_str": "success", "completed": True, "messages": []},
                       "outputs": {"11": {"images": [{"filename": "pose_00001_.mp4", "subfolder": "PoseAnimate",
                                                      "type": "output"}], "animated": [True]}}}}

    @staticmethod
    def validation_body():
        err = lambda t, msg, inp, val: {"type": t, "message": msg, "details": inp,  # noqa: E731
                                        "extra_info": {"input_name": inp, "received_value": val}}
        return {"error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation",
                          "details": "", "extra_info": {}},
                "node_errors": {
                    "5": {"class_type": "PoseAnimatePrepareDrivingVideo", "dependent_outputs": ["11"],
                          "errors": [err("value_smaller_than_min", "Value -1 smaller than min of 0", "max_frames", -1)]},
                    "7": {"class_type": "PoseAnimateDetectPoses", "dependent_outputs": ["11"],
                          "errors": [err("value_smaller_than_min", "Value 0 smaller than min of 1", "batch_size", 0)]}}}

    def posted(self, path):
        return [json.loads(b) for m, p, b in self.calls if m == "POST" and p == path]

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def fake(tmp_path):
    srv = FakeComfy(tmp_path)
    yield srv
    srv.close()


def _request(fake, **extra):
    return {"image_url": fake.base + "/media/ref.png", "video_url": _data_uri(MP4, "video/mp4"), **extra}


def _main(*args) -> tuple[int, str, str]:
    import contextlib

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = client.main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


def test_fake_round_trip_shape(fake, tmp_path):
    """The happy path on the fake (polling, after the websocket handshake fails)."""
    req = tmp_path / "req.json"
    req.write_text(json.dumps(_request(fake)))
    code, out, err = _main("pose", req, "--server", fake.base, "--out", tmp_path / "o" / "result.json")
    assert code == 0, err
    result = json.loads((tmp_path / "o" / "result.json").read_text())
    assert result == json.loads(out)
    assert result["video"]["file_name"] == "pose_00001_.mp4" and result["video"]["file_size"] == len(MP4)
    assert result["video"]["content_type"] == "video/mp4" and "/view?filename=pose_00001_.mp4" in result["video"]["url"]
    assert (tmp_path / "o" / "pose_00001_.mp4").read_bytes() == MP4
    assert result["seed"] is None and set(result["timings"]) == {"upload", "queue", "inference", "download", "total"}
    assert "polling" in err
    prompt = fake.posted("/prompt")[0]["prompt"]
    assert prompt["1"]["inputs"]["image"] == fake.uploads[0] and prompt["2"]["inputs"]["file"] == fake.uploads[1]


def test_unreachable_server(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    code, _, err = _main("pose", json.dumps({"image_url": "x", "video_url": "y"}), "--server", f"127.0.0.1:{port}",
                         "--out", tmp_path / "r.json")
    assert code == 3 and f"cannot reach ComfyUI at http://127.0.0.1:{port}" in err and "--server" in err


def test_silent_server_times_out_per_call(tmp_path):
    with socket.socket() as s:  # accepts connections (backlog) but never answers
        s.bind(("127.0.0.1", 0))
        s.listen(4)
        t0 = time.perf_counter()
        code, _, err = _main("pose", "{}", "--server", f"http://127.0.0.1:{s.getsockname()[1]}",
                             "--http-timeout", "0.5", "--out", tmp_path / "r.json")
    assert code == 3 and "did not answer" in err and time.perf_counter() - t0 < 10


def test_validation_error_mapped_to_request_fields(fake, tmp_path):
    fake.mode = "invalid"
    code, _, err = _main("pose", json.dumps(_request(fake, max_frames=-1)), "--server", fake.base,
                         "--out", tmp_path / "r.json", "--no-websocket")
    assert code == 2
    assert "max_frames: Value -1 smaller than min of 0" in err
    assert "node 7 PoseAnimateDetectPoses.batch_size" in err and "not a request field" in err
    with pytest.raises(client.RequestError) as exc:
        client.run("pose", _request(fake, max_frames=-1), fake.base, None, quiet=True, use_websocket=False)
    assert exc.value.fields == {"max_frames": "Value -1 smaller than min of 0 (got -1)"}
    assert not (tmp_path / "r.json").exists()


def test_partly_refused_prompt_is_cancelled(fake, tmp_path):
    """ComfyUI queues the outputs that passed validation and reports the others: the client
    does not settle for half a graph."""
    fake.mode = "partial"
    with pytest.raises(client.RequestError) as exc:
        client.run("pose", _request(fake, max_frames=-1), fake.base, tmp_path / "r.json", quiet=True,
                   use_websocket=False)
    assert set(exc.value.fields) == {"max_frames"}
    assert {"delete": ["p1"]} in fake.posted("/queue") and {"prompt_id": "p1"} in fake.posted("/interrupt")


def test_execution_error_names_node_and_field(fake, tmp_path):
    fake.mode = "error"
    with pytest.raises(client.ExecutionFailed) as exc:
        client.run("pose", _request(fake), fake.base, tmp_path / "r.json", quiet=True, use_websocket=False)
    msg = str(exc.value)
    assert "node 3 (GetVideoComponents)" in msg and "Invalid data" in msg
    assert exc.value.fields == ("video_url",) and "works on request field(s): video_url" in msg
    assert exc.value.exit_code == 4


def test_timeout_cancels_job(fake, tmp_path):
    fake.mode = "hang"
    t0 = time.perf_counter()
    code, _, err = _main("pose", json.dumps(_request(fake)), "--server", fake.base, "--timeout", "1",
                         "--out", tmp_path / "r.json")
    assert code == 5 and "did not finish within 1s" in err and "cancelled" in err and "--timeout" in err
    assert time.perf_counter() - t0 < 10
    assert {"delete": ["p1"]} in fake.posted("/queue") and {"prompt_id": "p1"} in fake.posted("/interrupt")


def test_timeout_keep_leaves_job(fake, tmp_path):
    fake.mode = "hang"
    code, _, err = _main("pose", json.dumps(_request(fake)), "--server", fake.base, "--timeout", "0.5",
                         "--keep-on-timeout", "--no-websocket", "--out", tmp_path / "r.json")
    assert code == 5 and "still queued" in err
    assert not fake.posted("/queue") and not fake.posted("/interrupt")


@pytest.mark.parametrize("url, words", [("/media/missing.png", "HTTP 404"), ("/media/wrong.png", "takes an image")])
def test_bad_media_url_refused_before_submit(fake, tmp_path, url, words):
    code, _, err = _main("pose", json.dumps(_request(fake, image_url=fake.base + url)), "--server", fake.base,
                         "--out", tmp_path / "r.json")
    assert code == 2 and err.startswith("error: image_url:") and words in err
    assert not fake.posted("/prompt") and not fake.uploads


def test_server_without_pack(fake, tmp_path):
    fake.missing_class = "PoseAnimateAlignPoses"
    code, _, err = _main("pose", json.dumps(_request(fake)), "--server", fake.base, "--out", tmp_path / "r.json")
    assert code == 1 and "PoseAnimateAlignPoses" in err and "custom_nodes" in err
    assert not fake.uploads


def test_bad_request_json(tmp_path):
    code, _, err = _main("pose", "{not json", "--server", "http://127.0.0.1:1", "--out", tmp_path / "r.json")
    assert code == 2 and "not valid JSON" in err


# --------------------------------------------------------------------------- real ComfyUI
@pytest.fixture(scope="module")
def media_http(media):
    """The harness media served over plain HTTP (the client's http(s) URL path)."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(media))
    handler.log_message = lambda *a: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


# Small requests per endpoint (fast on CPU with tiny weights); media keys are filled in by the test.
REAL_REQUESTS = {
    "pose": {"alignment": "one_to_all_ref", "style": "one_to_all"},
    # "reference" (the reference's own 256x320 size) instead of the hosted 480p keeps CPU runs short
    "one-to-all": {"prompt": "a person dancing", "resolution": "reference", "num_inference_steps": 2,
                   "image_guidance_scale": 2, "pose_guidance_scale": 1.5, "seed": 11},
    "uni-animate": {"prompt": "a person dancing", "resolution": "reference", "num_inference_steps": 2,
                    "cfg_scale": 1.5, "seed": 12},
    "animatediff-v2v": {"prompt": "a person dancing, anime", "num_inference_steps": 2, "guidance_scale": 7,
                        "select_every_nth_frame": 2, "seed": 13},
}


def _media_sources(name, media, media_http):
    """Each run mixes the three media kinds: path, http URL and data URI."""
    ref, clip = media / "poseanimate_reference.png", media / "poseanimate_driving.mp4"
    sources = {"image_url": str(ref), "video_url": _data_uri(clip.read_bytes(), "video/mp4")}
    if name != "pose":
        sources = {"image_url": f"{media_http}/{ref.name}", "video_url": str(clip)}
    return {k: v for k, v in sources.items() if k in client.ENDPOINTS[name].media}


def _absent_model_files(server, workflow: dict) -> list[str]:
    """File names the workflow's loaders ask for that the server's combo lists lack."""
    absent = []
    for node in workflow.values():
        if node["class_type"] in ("LoadImage", "LoadVideo"):
            continue
        info = server.get_json("/object_info/" + node["class_type"]).get(node["class_type"], {})
        spec = {**info.get("input", {}).get("required", {}), **info.get("input", {}).get("optional", {})}
        for name, value in node["inputs"].items():
            options = spec.get(name, [None])[0]
            if isinstance(value, str) and isinstance(options, list) and value not in options and \
                    any(value.endswith(ext) for ext in (".safetensors", ".ckpt", ".pth", ".pt", ".onnx", ".gguf", ".bin")):
                absent.append(f"{node['class_type']}.{name}={value}")
    return absent


@needs_comfyui
@pytest.mark.parametrize("name", sorted(REAL_REQUESTS))
def test_client_end_to_end(server, media, media_http, tiny_models, tmp_path, name):
    endpoint = client.ENDPOINTS[name]
    if not (client.WORKFLOWS / endpoint.workflow).exists():
        pytest.skip(f"workflows/api/{endpoint.workflow} is not in this checkout yet")
    absent = _absent_model_files(server, json.loads((client.WORKFLOWS / endpoint.workflow).read_text()))
    if absent:  # the harness's test_api_workflow_runs reports this as a failure; here it is a skip
        pytest.skip(f"no tiny weights for {endpoint.workflow} on the test server yet: {absent}")
    request = {**REAL_REQUESTS[name], **_media_sources(name, media, media_http)}
    (tmp_path / "request.json").write_text(json.dumps(request))
    t0 = time.perf_counter()
    code, out, err = _main(name, tmp_path / "request.json", "--server", server.base, "--out", tmp_path / "result.json",
                           "--timeout", "480")
    seconds = time.perf_counter() - t0
    if code != 0 and "_torchaudio" in err and "Could not load this library" in err:
        pytest.skip("this ComfyUI's venv has a torchaudio build that does not load with its torch, and "
                    "transformers/diffusers import it, so the model workflows cannot run there "
                    "(remove it: $COMFYUI_DIR/.venv/bin/pip uninstall -y torchaudio)")
    assert code == 0, err + f"\nweight writers that failed: {tiny_models[1]}\n--- ComfyUI log ---\n{server.log_tail(3000)}"
    result = json.loads((tmp_path / "result.json").read_text())
    assert set(result) == {"video", "seed", "timings"}
    assert set(result["video"]) == {"url", "content_type", "file_name", "file_size"}
    assert result["seed"] == request.get("seed")
    video = tmp_path / result["video"]["file_name"]
    assert video.stat().st_size == result["video"]["file_size"] > 0
    assert result["video"]["content_type"] == "video/mp4"
    status, body = server.request("GET", result["video"]["url"][len(server.base):])
    assert status == 200 and body == video.read_bytes(), "the result URL does not serve the video"
    got = _probe_video(video.read_bytes())
    workflow = json.loads((client.WORKFLOWS / endpoint.workflow).read_text())
    save_id = next(k for k, n in workflow.items() if n["class_type"] == "SaveVideo")
    want = _expected_video(workflow, save_id)  # the harness's rules: frames, fps, stated sizes
    if "image_url" in request and (name == "pose" or request.get("resolution") == "reference"):
        want.update(width=REF_W, height=REF_H)  # the reference's own size (a multiple of 16)
    elif "poseanimate_expect" not in workflow[save_id].get("_meta", {}):
        want.pop("width"), want.pop("height")
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=0.01), f"{name} video {key}: {got} vs expected {want}"
    assert "queued as" in err and "uploaded" in err, err
    if name == "pose":
        assert f": {CLIP_FRAMES}/{CLIP_FRAMES}" in err, f"no step progress on stderr:\n{err}"
    assert 0 < result["timings"]["inference"] <= result["timings"]["total"] <= seconds + 0.5
    print(f"\nclient {name}: {seconds:.1f}s {got} timings={result['timings']}")


@needs_comfyui
def test_client_real_validation_error_mapped(server, media, tmp_path):
    request = {"image_url": str(media / "poseanimate_reference.png"), "video_url": str(media / "poseanimate_driving.mp4"),
               "max_frames": -1, "alignment": "sideways"}
    with pytest.raises(client.RequestError) as exc:
        client.run("pose", request, server.base, tmp_path / "r.json", quiet=True)
    assert set(exc.value.fields) == {"max_frames", "alignment"}, str(exc.value)
    assert "smaller than min" in exc.value.fields["max_frames"] and "sideways" in exc.value.fields["alignment"]
    _assert_healthy_soon(server)


@needs_comfyui
def test_client_real_execution_error_named(server, media, tmp_path):
    """A video whose header passes the client's check but whose body is garbage fails on the server.
    Followed by polling /history (no websocket), so that path meets ComfyUI's real history format."""
    broken = tmp_path / "broken.mp4"
    broken.write_bytes((media / "poseanimate_driving.mp4").read_bytes()[:64] + b"\x00" * 4096)
    request = {"image_url": str(media / "poseanimate_reference.png"), "video_url": str(broken)}
    with pytest.raises(client.ExecutionFailed) as exc:
        client.run("pose", request, server.base, tmp_path / "r.json", quiet=True, timeout=120, use_websocket=False)
    assert "video_url" in exc.value.fields, str(exc.value)
    _assert_healthy_soon(server)


def _assert_healthy_soon(server, seconds: float = 15.0):
    """The error message can arrive a moment before the queue entry is cleared."""
    deadline = time.monotonic() + seconds
    while not server.healthy():
        assert time.monotonic() < deadline, "the server is not healthy after the error"
        time.sleep(0.2)


@needs_comfyui
def test_client_real_timeout_cancels_job(server, media, tmp_path):
    """--timeout on a job still running: the client cancels it and the server goes back to idle."""
    request = {"image_url": str(media / "poseanimate_reference.png"), "video_url": str(media / "poseanimate_long.mp4"),
               "alignment": "none"}
    t0 = time.perf_counter()
    with pytest.raises(client.JobTimeout) as exc:
        client.run("pose", request, server.base, tmp_path / "r.json", quiet=True, timeout=1.0)
    assert "cancelled on the server" in str(exc.value) and time.perf_counter() - t0 < 30
    _assert_healthy_soon(server, 120)
    entry = server.get_json(f"/history/{exc.value.prompt_id}").get(exc.value.prompt_id)
    if entry is not None:  # it had started: recorded as interrupted (else it was dropped from the queue)
        kinds = [m[0] for m in entry["status"]["messages"]]
        assert "execution_interrupted" in kinds and "execution_success" not in kinds, kinds


@needs_comfyui
def test_client_animatediff_1080p_runs_at_working_size(server, tiny_models, tmp_path):
    """A 1920x1080 phone-style clip through client.py: diffused and saved at 904x512 (short side 512,
    aspect kept, 910 cropped to a multiple of 8), not at 1080p."""
    import numpy as np

    from poseanimate.pose import video_io

    wf = json.loads((client.WORKFLOWS / client.ENDPOINTS["animatediff-v2v"].workflow).read_text())
    if _absent_model_files(server, wf):
        pytest.skip("no tiny weights for the AnimateDiff workflow on the test server")
    yy, xx = np.mgrid[0:1080, 0:1920]
    frames = [np.stack([(xx * 255 // 1919), (yy * 255 // 1079), np.full_like(xx, 40 * t)], -1).astype(np.uint8)
              for t in range(4)]
    clip = tmp_path / "phone_1080p.mp4"
    video_io.write_mp4(clip, np.stack(frames), 12.0)
    request = {"prompt": "a person dancing, anime", "video_url": str(clip), "num_inference_steps": 1,
               "select_every_nth_frame": 1, "seed": 3}
    (tmp_path / "request.json").write_text(json.dumps(request))
    code, out, err = _main("animatediff-v2v", tmp_path / "request.json", "--server", server.base, "--out",
                           tmp_path / "result.json", "--timeout", "480")
    assert code == 0, err + "\n--- ComfyUI log ---\n" + server.log_tail(3000)
    result = json.loads((tmp_path / "result.json").read_text())
    got = _probe_video((tmp_path / result["video"]["file_name"]).read_bytes())
    assert (got["width"], got["height"], got["frames"]) == (904, 512, 4), got
