"""Headless client: a hosted endpoint's request JSON in, a video from a ComfyUI server out.

    python client.py one-to-all request.json --server http://127.0.0.1:8188 --out result.json

The request is the hosted endpoint's JSON as-is (``image_url`` / ``video_url`` may be local
paths, http(s) URLs or base64 ``data:`` URIs). The client fills the endpoint's API workflow
(``workflows/api/*.json``) from a per-endpoint table of request field -> (node class, input),
uploads the media, submits the graph, shows progress on stderr, downloads the video next to
``--out`` and writes the hosted output shape::

    {"video": {"url", "content_type", "file_name", "file_size"}, "seed", "timings"}

Standard library only; with ``websocket-client`` installed it follows ``/ws`` for per-step
progress, otherwise it polls ``/history``. Exit codes: 0 done, 1 other errors (e.g. the server
lacks the pack), 2 bad request (the field is named), 3 server unreachable, 4 the graph failed
on the server, 5 timeout.
"""
from __future__ import annotations

import argparse
import base64
import binascii
import copy
import fnmatch
import hashlib
import json
import math
import mimetypes
import os
import random
import re
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent
WORKFLOWS = ROOT / "workflows" / "api"
VIDEO_EXTS = (".mp4", ".webm", ".mov", ".mkv", ".gif", ".avi")
MODEL_EXTS = (".safetensors", ".sft", ".ckpt", ".pt", ".pth", ".bin", ".onnx", ".gguf", ".json")


# --------------------------------------------------------------------------- errors
class ClientError(Exception):
    """An error a remote user can act on; ``exit_code`` tells scripts which kind."""

    exit_code = 1


class RequestError(ClientError):
    """The request is wrong; ``fields`` maps each request field at fault to what is wrong."""

    exit_code = 2

    def __init__(self, message: str, fields: dict[str, str] | None = None):
        super().__init__(message)
        self.fields = dict(fields or {})


class ServerUnreachable(ClientError):
    exit_code = 3


class ExecutionFailed(ClientError):
    exit_code = 4

    def __init__(self, message: str, node_id: str | None = None, fields: tuple[str, ...] = ()):
        super().__init__(message)
        self.node_id = node_id
        self.fields = fields


class JobTimeout(ClientError):
    exit_code = 5

    def __init__(self, message: str, prompt_id: str | None = None):
        super().__init__(message)
        self.prompt_id = prompt_id


# --------------------------------------------------------------------------- endpoint tables
@dataclass(frozen=True)
class Target:
    """Where a request field goes: every node whose class_type matches one of ``classes``
    (fnmatch patterns) and has a widget input named one of ``inputs``."""

    classes: tuple[str, ...]
    inputs: tuple[str, ...]


def T(classes, inputs) -> tuple[Target, ...]:
    as_tuple = (lambda v: (v,) if isinstance(v, str) else tuple(v))
    return (Target(as_tuple(classes), as_tuple(inputs)),)


IMAGE, VIDEO = "image", "video"
LOAD_IMAGE = T("LoadImage", "image")
LOAD_VIDEO = T("LoadVideo", "file")
WAN_TEXT = "PoseAnimateWanTextEncode"


@dataclass(frozen=True)
class Endpoint:
    workflow: str
    fields: dict[str, tuple[Target, ...]]
    media: dict[str, str] = field(default_factory=dict)  # field -> IMAGE / VIDEO
    required: tuple[str, ...] = ()
    seed_field: str | None = "seed"
    model_fields: dict[str, str] = field(default_factory=dict)  # field -> kind of model file it names
    ignored: tuple[str, ...] = ()  # hosted-only fields (safety checker, sync mode...) accepted and dropped


HOSTED_ONLY = ("sync_mode", "enable_safety_checker", "webhook_url")

ENDPOINTS: dict[str, Endpoint] = {
    "one-to-all": Endpoint(
        workflow="one_to_all_animation.json",
        media={"image_url": IMAGE, "video_url": VIDEO},
        required=("prompt", "image_url", "video_url"),
        fields={
            "image_url": LOAD_IMAGE,
            "video_url": LOAD_VIDEO,
            "prompt": T((WAN_TEXT, "PoseAnimateOneToAll*"), "prompt"),
            "negative_prompt": T((WAN_TEXT, "PoseAnimateOneToAll*"), "negative_prompt"),
            "resolution": T("PoseAnimateOneToAll*", "resolution"),
            "num_inference_steps": T("PoseAnimateOneToAll*", ("num_inference_steps", "steps")),
            "image_guidance_scale": T("PoseAnimateOneToAll*", "image_guidance_scale"),
            "pose_guidance_scale": T("PoseAnimateOneToAll*", "pose_guidance_scale"),
            "seed": T("PoseAnimateOneToAll*", ("seed", "noise_seed")),
        },
        ignored=HOSTED_ONLY,
    ),
    "uni-animate": Endpoint(
        workflow="unianimate.json",
        media={"image_url": IMAGE, "video_url": VIDEO},
        required=("prompt", "image_url", "video_url"),
        fields={
            "image_url": LOAD_IMAGE,
            "video_url": LOAD_VIDEO,
            "prompt": T((WAN_TEXT, "PoseAnimateUniAnimate*"), "prompt"),
            "negative_prompt": T((WAN_TEXT, "PoseAnimateUniAnimate*"), "negative_prompt"),
            "resolution": T("PoseAnimateUniAnimate*", "resolution"),
            "num_inference_steps": T("PoseAnimateUniAnimate*", ("num_inference_steps", "steps")),
            "cfg_scale": T("PoseAnimateUniAnimate*", ("cfg_scale", "cfg", "guidance")),
            "seed": T("PoseAnimateUniAnimate*", ("seed", "noise_seed")),
        },
        ignored=HOSTED_ONLY,
    ),
    "animatediff-v2v": Endpoint(
        workflow="animatediff_v2v.json",
        media={"video_url": VIDEO},
        required=("prompt", "video_url"),
        fields={
            "video_url": LOAD_VIDEO,
            "prompt": T("PoseAnimateAnimateDiff*", "prompt"),
            "negative_prompt": T("PoseAnimateAnimateDiff*", "negative_prompt"),
            "num_inference_steps": T("PoseAnimateAnimateDiff*", ("num_inference_steps", "steps")),
            "guidance_scale": T("PoseAnimateAnimateDiff*", ("guidance_scale", "guidance", "cfg")),
            "base_model": T("PoseAnimateAnimateDiff*Loader*", ("base_model", "checkpoint")),
            "loras": T("PoseAnimateAnimateDiff*Loader*", "loras_json"),
            "select_every_nth_frame": T("PoseAnimateAnimateDiff*", "select_every_nth_frame"),
            "seed": T("PoseAnimateAnimateDiff*", ("seed", "noise_seed")),
            # local extras (the hosted endpoint fixes them): working size and frame cap
            "short_side": T("PoseAnimateAnimateDiffSampler", "short_side"),
            "max_frames": T("PoseAnimateAnimateDiffSampler", "max_frames"),
        },
        model_fields={"base_model": "checkpoints", "loras": "loras"},
        ignored=HOSTED_ONLY,
    ),
    # Not a hosted endpoint: the pose stage alone (detect, align, render), same request style.
    "pose": Endpoint(
        workflow="pose_alignment.json",
        media={"image_url": IMAGE, "video_url": VIDEO},
        required=("image_url", "video_url"),
        seed_field=None,
        fields={
            "image_url": LOAD_IMAGE,
            "video_url": LOAD_VIDEO,
            "detector": T("PoseAnimateLoadPoseDetector", "backend"),
            "alignment": T("PoseAnimateAlignPoses", "mode"),
            "anchor_frame": T("PoseAnimateAlignPoses", "anchor_frame"),
            "style": T("PoseAnimateRenderPoses", "style"),
            "select_every_nth_frame": T("PoseAnimatePrepareDrivingVideo", "select_every_nth"),
            "skip_first_frames": T("PoseAnimatePrepareDrivingVideo", "skip_first_frames"),
            "max_frames": T("PoseAnimatePrepareDrivingVideo", "max_frames"),
        },
    ),
}


# --------------------------------------------------------------------------- media
@dataclass
class Media:
    data: bytes
    name: str  # upload file name (content-addressed, with an extension ComfyUI recognises)
    source: str  # for messages: the path / URL / "data: URI"


def _ext_for(kind: str, mime: str | None, name: str) -> str:
    ext = Path(name).suffix.lower()
    if ext and len(ext) <= 6:
        return ext
    guessed = mimetypes.guess_extension(mime.split(";")[0].strip()) if mime else None
    return guessed or (".png" if kind == IMAGE else ".mp4")


def _check_mime(field_name: str, kind: str, mime: str | None, where: str) -> None:
    major = (mime or "").split("/")[0].strip().lower()
    if kind == VIDEO and (mime or "").lower().startswith("image/gif"):
        return  # an animated GIF is a fine driving clip
    if major in ("image", "video") and major != kind:
        article = "an" if kind == IMAGE else "a"
        raise RequestError(f"{field_name}: {where} is {mime}, but this field takes {article} {kind}",
                           {field_name: f"expected {kind}, got {mime}"})


_ISO_IMAGE_BRANDS = (b"avif", b"avis", b"heic", b"heix", b"mif1", b"msf1")


def sniff(data: bytes) -> str | None:
    """IMAGE, VIDEO, "gif" (either) or None, from the container's magic bytes."""
    head = data[:16]
    if head.startswith(b"GIF87a") or head.startswith(b"GIF89a"):
        return "gif"
    if (head.startswith(b"\x89PNG\r\n\x1a\n") or head.startswith(b"\xff\xd8\xff") or head.startswith(b"BM")
            or head[:4] in (b"II*\x00", b"MM\x00*") or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")):
        return IMAGE
    if head[4:8] == b"ftyp":
        return IMAGE if head[8:12] in _ISO_IMAGE_BRANDS else VIDEO
    if (head[4:8] in (b"moov", b"mdat", b"free", b"wide", b"skip") or head.startswith(b"\x1a\x45\xdf\xa3")
            or (head[:4] == b"RIFF" and head[8:12] == b"AVI ") or head[:1] == b"\x47" and data[188:189] == b"\x47"):
        return VIDEO
    return None


def load_media(field_name: str, value, kind: str, timeout: float = 60.0) -> Media:
    """Bytes of a local path, file:// or http(s) URL, or base64 data URI; errors name the field."""
    if not isinstance(value, str) or not value.strip():
        raise RequestError(f"{field_name} must be a local path, an http(s) URL or a data: URI, got {value!r}",
                           {field_name: "not a string"})
    value = value.strip()
    mime = None
    if value.startswith("data:"):
        head, sep, payload = value.partition(",")
        if not sep:
            raise RequestError(f"{field_name}: malformed data URI (no ',' after the media type); expected "
                               f"data:{kind}/...;base64,<data>", {field_name: "malformed data URI"})
        params = head[5:].split(";")
        mime = params[0] or None
        try:
            if "base64" in params[1:]:
                data = base64.b64decode(payload, validate=True)
            else:
                data = urllib.parse.unquote_to_bytes(payload)
        except (binascii.Error, ValueError) as exc:
            raise RequestError(f"{field_name}: the data URI's base64 payload does not decode ({exc})",
                               {field_name: "bad base64"}) from None
        if not data:
            raise RequestError(f"{field_name}: the data URI is empty", {field_name: "empty data URI"})
        _check_mime(field_name, kind, mime, "the data URI")
        source, name = "data: URI", ""
    elif re.match(r"https?://", value, re.I):
        try:
            req = urllib.request.Request(value, headers={"User-Agent": "poseanimate-client"})
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                data = resp.read()
                mime = resp.headers.get_content_type() if resp.headers.get("Content-Type") else None
        except urllib.error.HTTPError as exc:
            raise RequestError(f"{field_name}: downloading {value} failed with HTTP {exc.code} {exc.reason}",
                               {field_name: f"HTTP {exc.code}"}) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise RequestError(f"{field_name}: cannot download {value} ({reason})", {field_name: "unreachable URL"}) from None
        if mime in ("application/octet-stream", "binary/octet-stream", "text/plain"):
            mime = None
        _check_mime(field_name, kind, mime, value)
        source, name = value, Path(urllib.parse.urlparse(value).path).name
    else:
        path = Path(urllib.parse.unquote(urllib.parse.urlparse(value).path)) if value.startswith("file://") else Path(value)
        path = path.expanduser()
        if not path.is_file():
            raise RequestError(f"{field_name}: {path} is not a file (expected a local path, an http(s) URL or a data: URI)",
                               {field_name: "file not found"})
        data = path.read_bytes()
        if not data:
            raise RequestError(f"{field_name}: {path} is empty", {field_name: "empty file"})
        source, name = str(path), path.name
        mime = mimetypes.guess_type(path.name)[0]
        _check_mime(field_name, kind, mime, str(path))
    found = sniff(data)
    if found is None or (found != kind and not (kind == VIDEO and found == "gif")):
        what = "an image (PNG, JPEG, WebP, GIF, BMP, TIFF)" if kind == IMAGE else "a video (MP4/MOV, WebM/MKV, AVI, GIF)"
        got = {None: "unrecognised bytes", IMAGE: "an image", VIDEO: "a video", "gif": "a GIF"}[found]
        raise RequestError(f"{field_name}: {source} does not hold {what}; its content is {got} "
                           f"(starts {data[:12]!r})", {field_name: f"not {kind} data"})
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", Path(name).stem)[:40] or field_name.replace("_url", "")
    digest = hashlib.sha1(data).hexdigest()[:12]
    return Media(data, f"{stem}_{digest}{_ext_for(kind, mime, name)}", source)


# --------------------------------------------------------------------------- filling the workflow
@dataclass
class Filled:
    prompt: dict
    origin: dict[tuple[str, str], str]  # (node id, input) -> request field that set it
    seed: int | None
    uploads: dict[str, Media]  # media field -> what to upload

    def prompt_inputs(self) -> set[tuple[str, str]]:
        return {(n, i) for n, node in self.prompt.items() for i in node.get("inputs", {})}


def _nodes_for(prompt: dict, targets: tuple[Target, ...]) -> list[tuple[str, str]]:
    """(node id, input) pairs the first matching target resolves to in ``prompt``."""
    for target in targets:
        hits = []
        for node_id, node in prompt.items():
            if not any(fnmatch.fnmatchcase(node.get("class_type", ""), pat) for pat in target.classes):
                continue
            inputs = node.get("inputs", {})
            for name in target.inputs:
                if name in inputs and not (isinstance(inputs[name], list) and len(inputs[name]) == 2):
                    hits.append((node_id, name))
                    break
        if hits:
            return hits
    return []


def _normalised(name: str) -> str:
    stem = name.rsplit("/", 1)[-1]
    stem = re.sub(r"\.(safetensors|ckpt|pt|pth|bin|gguf)$", "", stem, flags=re.I)
    return re.sub(r"[^a-z0-9]", "", stem.lower())


def non_finite_numbers(value, where: str = "") -> dict[str, float]:
    """Request paths (``loras[0].scale``) holding NaN or +-Infinity (Python's JSON reader accepts them)."""
    found = {}
    if isinstance(value, float) and not math.isfinite(value):
        found[where or "request"] = value
    elif isinstance(value, dict):
        for k, v in value.items():
            found.update(non_finite_numbers(v, f"{where}.{k}" if where else str(k)))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found.update(non_finite_numbers(v, f"{where}[{i}]"))
    return found


def png_bit_depth(data: bytes) -> int | None:
    """Bits per channel of a PNG (its IHDR), None for other formats."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR" and len(data) > 24:
        return data[24]
    return None


def match_model_name(field_name: str, value, options: list[str] | None, kind: str, warn=None) -> str:
    """A hosted model name (``cardosAnimev20``) or file name -> a file the server offers."""
    if not isinstance(value, str) or not value.strip():
        raise RequestError(f"{field_name} must be a file name in ComfyUI's {kind} folder, got {value!r}",
                           {field_name: "not a string"})
    value = value.strip()
    if options is None or value in options:
        return value
    want = _normalised(value.split("?")[0])
    for opt in options:
        if _normalised(opt) == want:
            if warn:
                warn(f"{field_name}: {value!r} is not a file name on the server; using its file {opt!r}")
            return opt
    shown = ", ".join(options[:15]) + (" ..." if len(options) > 15 else "") if options else "(none)"
    raise RequestError(f"{field_name}: {value!r} is not in the server's {kind} folder; put the file in "
                       f"ComfyUI/models/{kind}/ (or a folder in extra_model_paths.yaml). Available: {shown}",
                       {field_name: f"not in models/{kind}"})


def fill_workflow(endpoint: Endpoint, workflow: dict, request: dict, options_of=None, seed_rng=None,
                  warn=None, media_timeout: float = 60.0) -> Filled:
    """Put the request's values into a copy of ``workflow``; validate what only the client can.

    ``options_of(class_type, input)`` returns a combo's choices on the server (model names).
    """
    if not isinstance(request, dict):
        raise RequestError("the request must be a JSON object")
    prompt = copy.deepcopy(workflow)
    origin: dict[tuple[str, str], str] = {}
    problems: dict[str, str] = {}
    for name in endpoint.required:  # "" is a valid prompt (the nodes take it); media must be non-empty
        if request.get(name) is None or (name in endpoint.media and request.get(name) == ""):
            problems[name] = "required"
    bad_numbers = non_finite_numbers(request)
    if bad_numbers:
        raise RequestError("request field(s) hold NaN or Infinity, which no model input can use: "
                           + ", ".join(f"{k} = {v}" for k, v in bad_numbers.items())
                           + "; send finite numbers (e.g. 7.5)", {k: "not a finite number" for k in bad_numbers})
    unknown = sorted(set(request) - set(endpoint.fields) - set(endpoint.ignored))
    if unknown and warn:
        warn(f"ignoring request field(s) this local endpoint has no equivalent for: {', '.join(unknown)}")
    if problems:
        raise RequestError("missing required request field(s): " + ", ".join(problems), problems)
    seed = None
    values = {k: v for k, v in request.items() if k in endpoint.fields and v is not None}
    if endpoint.seed_field:
        seed = values.get(endpoint.seed_field)
        if seed is None:
            seed = (seed_rng or random.SystemRandom()).randrange(0, 2 ** 32)
        elif isinstance(seed, bool) or not isinstance(seed, int):
            raise RequestError(f"{endpoint.seed_field} must be an integer, got {seed!r}",
                               {endpoint.seed_field: "not an integer"})
        values[endpoint.seed_field] = seed
    uploads = {}
    for name, value in values.items():
        hits = _nodes_for(prompt, endpoint.fields[name])
        if not hits:
            want = " or ".join(f"{'/'.join(t.classes)}.{'/'.join(t.inputs)}" for t in endpoint.fields[name])
            raise RequestError(f"{name}: the workflow has no node input for it (looked for {want}); "
                               "is the workflow file from this version of the pack?", {name: "no node in workflow"})
        if name in endpoint.media:
            uploads[name] = load_media(name, value, endpoint.media[name], media_timeout)
            value = uploads[name].name
            if endpoint.media[name] == IMAGE and png_bit_depth(uploads[name].data) == 16 and warn:
                warn(f"warning: {name} is a 16-bit PNG; ComfyUI's Load Image turns such images (nearly) white, so the "
                     "pose detector may find nobody. Save the reference as an 8-bit PNG or a JPEG.")
        elif name == "loras":
            value = _loras_json(name, value, lambda: options_of(*_lora_slot(prompt, hits)) if options_of else None, warn)
        elif name in endpoint.model_fields:
            node_id, inp = hits[0]
            opts = options_of(prompt[node_id]["class_type"], inp) if options_of else None
            value = match_model_name(name, value, opts, endpoint.model_fields[name], warn)
        for node_id, inp in hits:
            prompt[node_id]["inputs"][inp] = value
            origin[(node_id, inp)] = name
    return Filled(prompt, origin, seed, uploads)


def _lora_slot(prompt, hits):
    """The loader's first fixed lora slot lists the loras folder: used to check lora names."""
    node_id = hits[0][0]
    slots = [k for k in prompt[node_id]["inputs"] if re.fullmatch(r"lora(_\d+)?(_name)?", k)]
    return prompt[node_id]["class_type"], (slots[0] if slots else "lora_1")


def _loras_json(name, value, options, warn=None) -> str:
    """The hosted ``loras`` list [{path, scale}] -> the loader's loras_json [{name, scale}]."""
    if not isinstance(value, list):
        raise RequestError(f"{name} must be a list of {{\"path\": ..., \"scale\": ...}} objects", {name: "not a list"})
    opts = options() if value else None
    if opts is not None:
        opts = [o for o in opts if o != "None"]
    out = []
    for i, item in enumerate(value):
        where = f"{name}[{i}]"
        if not isinstance(item, dict) or not (item.get("path") or item.get("name")):
            raise RequestError(f"{where} must be an object with a 'path' (a file in ComfyUI's loras folder)",
                               {where: "no path"})
        _refuse_remote_lora(f"{where}.path", item.get("path") or item.get("name"), opts)
        scale = item.get("scale", 1.0)
        if isinstance(scale, bool) or not isinstance(scale, (int, float)):
            raise RequestError(f"{where}.scale must be a number, got {scale!r}", {f"{where}.scale": "not a number"})
        out.append({"name": match_model_name(f"{where}.path", item.get("path") or item.get("name"), opts, "loras", warn),
                    "scale": float(scale)})
    return json.dumps(out) if out else ""


def _refuse_remote_lora(where: str, path, options) -> None:
    """The hosted endpoint downloads ``loras[].path`` (URL or hub name); this client never downloads.
    A hub-like ``owner/repo`` is refused only when the server's loras folder has nothing by that name."""
    if not isinstance(path, str):
        return
    text = path.strip()
    url = re.match(r"^(https?|hf|s3)://", text, re.I)
    hub = (re.fullmatch(r"[\w.-]+/[\w.-]+(/[\w./-]+)?", text) and options is not None
           and _normalised(text) not in {_normalised(o) for o in options})
    if not (url or hub):
        return
    stem = text.split("?")[0].rstrip("/").rsplit("/", 1)[-1] or "lora"
    name = stem if re.search(r"\.(safetensors|ckpt|pt|pth|bin)$", stem, re.I) else stem + ".safetensors"
    what = "a URL" if url else "a Hugging Face hub name"
    raise RequestError(f"{where}: {text!r} is {what}; this local endpoint never downloads. Download the LoRA file "
                       f"yourself, put it in ComfyUI/models/loras/ (e.g. as {name}) and pass \"path\": \"{name}\"",
                       {where: "URL / hub name: put the file in models/loras"})


# --------------------------------------------------------------------------- server
class Comfy:
    """The few ComfyUI routes the client needs, with errors a remote user can act on."""

    def __init__(self, server: str, timeout: float = 30.0):
        if not re.match(r"https?://", server):
            server = "http://" + server
        self.base = server.rstrip("/")
        self.timeout = timeout
        self.client_id = uuid.uuid4().hex

    def _unreachable(self, exc) -> ServerUnreachable:
        reason = getattr(exc, "reason", exc)
        return ServerUnreachable(
            f"cannot reach ComfyUI at {self.base} ({reason}). Check that the server is running and listening "
            f"there (python main.py --listen 0.0.0.0 --port 8188 for remote use) or pass --server.")

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
                timeout: float | None = None) -> tuple[int, bytes]:
        req = urllib.request.Request(self.base + path, data=body, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.timeout) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except (socket.timeout, TimeoutError):
            raise ServerUnreachable(f"ComfyUI at {self.base} did not answer {method} {path} within "
                                    f"{timeout or self.timeout:.0f}s (server overloaded or a proxy in the way?)") from None
        except (urllib.error.URLError, ConnectionError, OSError) as exc:
            raise self._unreachable(exc) from None

    def get_json(self, path: str, timeout: float | None = None):
        status, data = self.request("GET", path, timeout=timeout)
        if status != 200:
            raise ClientError(f"ComfyUI at {self.base} answered GET {path} with HTTP {status}: {data[:300]!r}")
        try:
            return json.loads(data)
        except json.JSONDecodeError:
            raise ClientError(f"{self.base}{path} did not return JSON; is this a ComfyUI server?") from None

    def post_json(self, path: str, payload) -> tuple[int, object]:
        status, data = self.request("POST", path, json.dumps(payload).encode(), {"Content-Type": "application/json"})
        try:
            return status, (json.loads(data) if data else None)
        except json.JSONDecodeError:
            return status, data.decode(errors="replace")

    def object_info(self, class_type: str) -> dict | None:
        info = self.get_json("/object_info/" + urllib.parse.quote(class_type, safe=""))
        return info.get(class_type)

    def upload(self, field_name: str, media: Media) -> str:
        boundary = uuid.uuid4().hex
        body = b"".join([
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{media.name}\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n".encode() + media.data + b"\r\n",
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"overwrite\"\r\n\r\ntrue\r\n".encode(),
            f"--{boundary}--\r\n".encode()])
        status, data = self.request("POST", "/upload/image", body,
                                    {"Content-Type": f"multipart/form-data; boundary={boundary}"},
                                    timeout=max(self.timeout, 120))
        if status != 200:
            raise RequestError(f"{field_name}: the server refused the upload of {media.source} "
                               f"(HTTP {status}: {data[:200]!r})", {field_name: f"upload refused ({status})"})
        info = json.loads(data)
        return f"{info['subfolder']}/{info['name']}" if info.get("subfolder") else info["name"]

    def cancel(self, prompt_id: str) -> None:
        """Drop the job whether it is queued or running (best effort)."""
        for path, payload in (("/queue", {"delete": [prompt_id]}), ("/interrupt", {"prompt_id": prompt_id})):
            try:
                self.post_json(path, payload)
            except ClientError:
                pass

    def download(self, entry: dict) -> bytes:
        query = self.view_query(entry)
        status, data = self.request("GET", "/view?" + query, timeout=max(self.timeout, 300))
        if status != 200:
            raise ClientError(f"downloading {entry.get('filename')} from {self.base}/view failed with HTTP {status}")
        return data

    @staticmethod
    def view_query(entry: dict) -> str:
        return urllib.parse.urlencode({"filename": entry["filename"], "subfolder": entry.get("subfolder", ""),
                                       "type": entry.get("type", "output")})


# --------------------------------------------------------------------------- errors from the server
def describe_validation(body, filled: Filled, workflow_name: str) -> RequestError:
    """ComfyUI's 400 body -> an error naming the request fields at fault."""
    if not isinstance(body, dict):
        return RequestError(f"ComfyUI refused the prompt: {str(body)[:500]}")
    fields: dict[str, str] = {}
    lines = []
    for node_id, entry in (body.get("node_errors") or {}).items():
        said = set()
        for err in entry.get("errors", []):
            extra = err.get("extra_info") or {}
            inp = extra.get("input_name")
            text = err.get("message", "invalid")
            details = err.get("details")
            if err.get("type") == "custom_validation_failed" and details:
                # ComfyUI files one node check's answer under each input the check takes: keep it
                # once, under the input the answer names first (the pack's checks start with it).
                reason = str(details).split(" - ", 1)[-1]
                if reason in said:
                    continue
                said.add(reason)
                named = re.match(r"\s*([A-Za-z_][A-Za-z0-9_]*)", reason)
                inp = named.group(1) if named and (str(node_id), named.group(1)) in filled.prompt_inputs() else inp
                text, details = reason, None
            if details and details not in text and details != inp:
                text += f": {details}"
            if "received_value" in extra:
                text += f" (got {extra['received_value']!r})"
            where = f"node {node_id} {entry.get('class_type', '?')}.{inp}"
            name = filled.origin.get((str(node_id), inp))
            if name is not None:
                fields.setdefault(name, text)
                lines.append(f"  {name}: {text}  [{where}]")
            else:
                lines.append(f"  {where}: {text}  (a value fixed in {workflow_name}, not a request field)")
    error = body.get("error") or {}
    if isinstance(error, dict):
        head = error.get("message", "invalid prompt")
        if error.get("type") == "invalid_prompt" and "does not exist" in str(error.get("details", "")):
            head += (f": {error.get('details')} - the server lacks this node; install or update "
                     "ComfyUI-PoseAnimate in its custom_nodes and restart it")
        elif not lines and error.get("details"):
            head += f": {error['details']}"
    else:
        head = str(error)
    return RequestError("ComfyUI refused the request: " + head + ("\n" + "\n".join(lines) if lines else ""), fields)


# Words by which a server message points at a media field (besides the field's own name and
# the node inputs it sets): a message about the reference blames image_url, not video_url.
FIELD_WORDS = {"image_url": ("reference", "image"), "video_url": ("driving", "video", "frames")}
VIDEO_NODES = ("LoadVideo", "GetVideoComponents")


def _mentions(message: str, words) -> int | None:
    """Where ``message`` first names one of ``words`` (``_`` counts as a separator), else None."""
    spots = [m.start() for w in words if w
             for m in re.finditer(rf"(?<![A-Za-z0-9]){re.escape(w)}(?![A-Za-z0-9])", message, re.I)]
    return min(spots) if spots else None


def fields_feeding(prompt: dict, origin: dict, node_id: str, message: str = "") -> tuple[tuple[str, ...], bool]:
    """The request fields a failure in ``node_id`` is about. Returns (fields, direct).

    Every request field set on the node or anywhere upstream of it is a candidate. When the
    message names some of them (the field, an input it sets, or a word such as "reference" or
    "driving"), the first named wins; otherwise the node's own fields, else all upstream ones.
    """
    candidates: list[tuple[str, int]] = []
    level, seen, depth = [str(node_id)], set(), 0
    while level:
        for (n, _), f in sorted(origin.items()):
            if n in level and f not in {c for c, _ in candidates}:
                candidates.append((f, depth))
        seen.update(level)
        nxt = []
        for n in level:
            for value in (prompt.get(n) or {}).get("inputs", {}).values():
                if isinstance(value, list) and len(value) == 2 and str(value[0]) in prompt and str(value[0]) not in seen:
                    nxt.append(str(value[0]))
        level, depth = sorted(set(nxt)), depth + 1
    if not candidates:
        return (), True
    if message:
        spots = {}
        for f, _ in candidates:
            words = {f, *FIELD_WORDS.get(f, ()), *(inp for (_, inp), g in origin.items() if g == f)}
            spot = _mentions(message, words)
            if spot is not None:
                spots[f] = spot
        if spots:
            first = min(spots.values())
            named = [f for f, _ in candidates if spots.get(f) == first]
            return tuple(named), all(d == 0 for f, d in candidates if f in named)
    own = [f for f, d in candidates if d == 0]
    return (tuple(own), True) if own else (tuple(f for f, _ in candidates), False)


def describe_execution_error(data: dict, filled: Filled) -> ExecutionFailed:
    node_id = str(data.get("node_id", "?"))
    text = str(data.get("exception_message", "")).strip()
    node_type = data.get("node_type", "?")
    fed, direct = fields_feeding(filled.prompt, filled.origin, node_id, text)
    hint = ""
    if fed:
        hint = f" (this node {'takes' if direct else 'works on'} request field(s): {', '.join(fed)})"
    msg = (f"the graph failed in node {node_id} ({node_type}){hint}: "
           f"{data.get('exception_type', 'Error')}: {text}")
    if node_type in VIDEO_NODES:
        msg += ("\nComfyUI could not read video frames from the uploaded file: it is empty (0 frames), has no video "
                "stream or is damaged. Send a video that plays, e.g. an H.264 MP4.")
    return ExecutionFailed(msg, node_id, fed)


def check_fixed_values(prompt: dict, origin: dict, spec_of, workflow_name: str) -> None:
    """Values fixed in the workflow (not set by the request) that the server does not offer,
    above all model files: named with the folder to put them in, before any media is uploaded."""
    problems = []
    for node_id, node in prompt.items():
        for inp, value in node.get("inputs", {}).items():
            if (node_id, inp) in origin or not isinstance(value, str):
                continue
            options, opts = spec_of(node["class_type"], inp)
            if options is None or value in options:
                continue
            where = f"node {node_id} ({node.get('_meta', {}).get('title') or node['class_type']}) input {inp}"
            if Path(value).suffix.lower() in MODEL_EXTS:
                folder = re.search(r"models/([A-Za-z0-9_]+)", str(opts.get("tooltip", "")))
                folder = f"ComfyUI/models/{folder.group(1)}/" if folder else "the ComfyUI model folder this input lists"
                problems.append(f"  {where}: the model file {value!r} is not on the server. Put {value} in {folder} "
                                "(or a folder listed in extra_model_paths.yaml), then restart ComfyUI or refresh its "
                                "model lists")
            else:
                shown = ", ".join(map(str, options[:10])) + (" ..." if len(options) > 10 else "")
                problems.append(f"  {where}: {value!r} is not one of the server's choices ({shown}); update "
                                "ComfyUI-PoseAnimate on the server or pass a matching --workflow")
    if problems:
        raise ClientError(f"{workflow_name} cannot run on this server (nothing was uploaded):\n" + "\n".join(problems))


# --------------------------------------------------------------------------- running
@dataclass
class Progress:
    """Prints one stderr line per node and per 10% of a node's steps."""

    stream: object = sys.stderr
    quiet: bool = False
    titles: dict = field(default_factory=dict)
    t0: float = field(default_factory=time.perf_counter)
    _last: tuple = ()

    def say(self, text: str) -> None:
        if not self.quiet:
            print(f"[{time.perf_counter() - self.t0:7.1f}s] {text}", file=self.stream, flush=True)

    def node(self, node_id) -> None:
        self.say(f"node {node_id} {self.titles.get(str(node_id), '')}".rstrip())

    def step(self, node_id, value: int, maximum: int) -> None:
        bucket = (str(node_id), int(10 * value / maximum) if maximum else 0)
        if bucket != self._last or value == maximum:
            self._last = bucket
            self.say(f"node {node_id} {self.titles.get(str(node_id), '')}: {value}/{maximum}")


def _follow_ws(comfy: Comfy, ws, prompt_id: str, deadline: float, progress: Progress, filled: Filled) -> dict:
    """Read /ws until the job ends; returns timing marks. Raises on error / interrupt / timeout."""
    marks = {}
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise JobTimeout("")
        ws.settimeout(min(left, 5.0))
        try:
            raw = ws.recv()
        except Exception as exc:  # websocket timeout or drop: check /history, it is the truth
            if type(exc).__name__ not in ("WebSocketTimeoutException", "TimeoutError", "timeout"):
                progress.say(f"websocket closed ({exc!r}); polling /history instead")
                return _poll(comfy, prompt_id, deadline, progress, filled, marks)
            if _history(comfy, prompt_id).get("status", {}).get("completed") is not None:
                return marks
            continue
        if not isinstance(raw, str):
            if raw[:4] == b"\x00\x00\x00\x03" and len(raw) >= 8:  # ComfyUI's TEXT event: node id + text
                size = int.from_bytes(raw[4:8], "big")
                node, text = raw[8:8 + size].decode(errors="replace"), raw[8 + size:].decode(errors="replace")
                progress.say(f"node {node} {progress.titles.get(node, '')}: {text}")
            continue  # other binary frames are previews
        msg = json.loads(raw)
        kind, data = msg.get("type"), msg.get("data") or {}
        if isinstance(data, dict) and data.get("prompt_id") not in (None, prompt_id):
            continue
        if kind == "execution_start":
            marks["start"] = time.perf_counter()
            progress.say("running")
        elif kind == "execution_cached" and data.get("nodes"):
            progress.say(f"cached: nodes {', '.join(map(str, data['nodes']))}")
        elif kind == "executing" and data.get("node") is not None:
            progress.node(data["node"])
        elif kind == "progress":
            progress.step(data.get("node"), int(data.get("value", 0)), int(data.get("max", 0)))
        elif kind == "execution_error":
            raise describe_execution_error(data, filled)
        elif kind == "execution_interrupted":
            raise ExecutionFailed(f"the job was interrupted on the server (node {data.get('node_id')}); "
                                  "someone pressed cancel there, or the server was asked to /interrupt")
        elif kind in ("execution_success",) or (kind == "executing" and data.get("node") is None
                                                 and data.get("prompt_id") == prompt_id):
            return marks


def _jobs_ahead(comfy: Comfy, prompt_id: str) -> str:
    """", N job(s) ahead" from /queue (the prompt's "number" is a counter, not a position)."""
    try:
        queue = comfy.get_json("/queue")
    except ClientError:
        return ""
    mine = [item[0] for item in queue.get("queue_pending", []) if item[1] == prompt_id]
    ahead = sum(1 for item in queue.get("queue_running", []) if item[1] != prompt_id)
    if mine:
        ahead += sum(1 for item in queue.get("queue_pending", []) if item[0] < mine[0])
    return f", {ahead} job(s) ahead" if ahead else ""


def _history(comfy: Comfy, prompt_id: str) -> dict:
    return comfy.get_json(f"/history/{prompt_id}").get(prompt_id, {})


def _poll(comfy: Comfy, prompt_id: str, deadline: float, progress: Progress, filled: Filled, marks=None) -> dict:
    marks = dict(marks or {})
    said = None
    while time.monotonic() < deadline:
        entry = _history(comfy, prompt_id)
        status = entry.get("status") or {}
        if status.get("completed") is not None:
            for kind, data in status.get("messages", []):
                if kind == "execution_error":
                    raise describe_execution_error(data, filled)
                if kind == "execution_interrupted":
                    raise ExecutionFailed(f"the job was interrupted on the server (node {data.get('node_id')})")
            if status.get("status_str") == "error":
                raise ExecutionFailed(f"the job failed on the server: {json.dumps(status)[:500]}")
            return marks
        queue = comfy.get_json("/queue")
        running = any(item[1] == prompt_id for item in queue.get("queue_running", []))
        state = "running" if running else "queued"
        if running and "start" not in marks:
            marks["start"] = time.perf_counter()
        if state != said:
            progress.say(state + ("" if running else " (waiting for other jobs)"))
            said = state
        time.sleep(min(0.5, max(deadline - time.monotonic(), 0)))
    raise JobTimeout("")


def _video_entry(history: dict) -> dict:
    """The saved video among the job's outputs (SaveVideo reports under "images")."""
    for node_id, out in (history.get("outputs") or {}).items():
        for key in ("images", "videos", "gifs", "video"):
            for entry in out.get(key, []) or []:
                if isinstance(entry, dict) and str(entry.get("filename", "")).lower().endswith(VIDEO_EXTS):
                    return entry
    raise ExecutionFailed("the job finished but saved no video; does the workflow end in a SaveVideo node?")


def run(endpoint_name: str, request: dict, server: str, out: Path | None = None, *, workflow: Path | None = None,
        timeout: float = 3600.0, http_timeout: float = 30.0, use_websocket: bool = True, quiet: bool = False,
        stream=None, cancel_on_timeout: bool = True) -> dict:
    """The whole round trip; returns the hosted output shape (and writes it to ``out``)."""
    t_total = time.perf_counter()
    if endpoint_name not in ENDPOINTS:
        raise RequestError(f"unknown endpoint {endpoint_name!r}; choose one of {', '.join(ENDPOINTS)}")
    endpoint = ENDPOINTS[endpoint_name]
    wf_path = Path(workflow) if workflow else WORKFLOWS / endpoint.workflow
    if not wf_path.is_file():
        raise ClientError(f"workflow {wf_path} not found (endpoint {endpoint_name} needs it; pass --workflow)")
    graph = json.loads(wf_path.read_text())
    progress = Progress(stream or sys.stderr, quiet)
    comfy = Comfy(server, http_timeout)
    comfy.get_json("/system_stats")  # reachable and really ComfyUI, before any upload
    info_cache: dict[str, dict | None] = {}

    def info(class_type):
        if class_type not in info_cache:
            info_cache[class_type] = comfy.object_info(class_type)
        return info_cache[class_type]

    def spec_of(class_type, inp):
        """(combo choices or None, input options) of a node input on the server."""
        node = info(class_type) or {}
        spec = {**node.get("input", {}).get("required", {}), **node.get("input", {}).get("optional", {})}.get(inp)
        opts = spec[1] if spec and len(spec) > 1 and isinstance(spec[1], dict) else {}
        if spec and isinstance(spec[0], list):
            return list(spec[0]), opts
        if spec and spec[0] == "COMBO":
            return list(opts.get("options", [])), opts
        return None, opts

    def options_of(class_type, inp):
        return spec_of(class_type, inp)[0]

    missing = sorted(c for c in {n["class_type"] for n in graph.values()} if not info(c))
    if missing:
        raise ClientError(f"the server at {comfy.base} lacks node(s) {', '.join(missing)}: install or update "
                          "ComfyUI-PoseAnimate in its custom_nodes folder and restart it")
    filled = fill_workflow(endpoint, graph, request, options_of, warn=progress.say)
    progress.titles = {k: v.get("_meta", {}).get("title") or v["class_type"] for k, v in filled.prompt.items()}
    check_fixed_values(filled.prompt, filled.origin, spec_of, wf_path.name)

    t0 = time.perf_counter()
    for name, media in filled.uploads.items():
        stored = comfy.upload(name, media)
        for (node_id, inp), fname in filled.origin.items():
            if fname == name:
                filled.prompt[node_id]["inputs"][inp] = stored
        progress.say(f"uploaded {name} ({len(media.data) / 1e6:.2f} MB) as {stored}")
    t_upload = time.perf_counter() - t0

    ws = None
    if use_websocket:
        try:
            import websocket

            ws = websocket.WebSocket()
            ws_base = "ws" + comfy.base[4:]
            ws.connect(f"{ws_base}/ws?clientId={comfy.client_id}", timeout=http_timeout)
        except ImportError:
            progress.say("websocket-client not installed: polling for completion (pip install websocket-client for step progress)")
            ws = None
        except Exception as exc:  # noqa: BLE001 - a server or proxy without websockets still works by polling
            progress.say(f"no websocket at {comfy.base}/ws ({exc.__class__.__name__}); polling for completion")
            ws = None
    try:
        t_submit = time.perf_counter()
        status, body = comfy.post_json("/prompt", {"prompt": filled.prompt, "client_id": comfy.client_id})
        if status == 400 or (status == 200 and isinstance(body, dict) and body.get("node_errors")):
            if status == 200:
                comfy.cancel(body.get("prompt_id", ""))
            raise describe_validation(body, filled, wf_path.name)
        if status != 200 or not isinstance(body, dict) or "prompt_id" not in body:
            raise ClientError(f"ComfyUI answered POST /prompt with HTTP {status}: {str(body)[:500]}")
        prompt_id = body["prompt_id"]
        progress.say(f"queued as {prompt_id}{_jobs_ahead(comfy, prompt_id)}")
        deadline = time.monotonic() + timeout
        try:
            if ws is not None:
                marks = _follow_ws(comfy, ws, prompt_id, deadline, progress, filled)
            else:
                marks = _poll(comfy, prompt_id, deadline, progress, filled)
        except JobTimeout:
            if cancel_on_timeout:
                comfy.cancel(prompt_id)
            raise JobTimeout(f"the job {prompt_id} did not finish within {timeout:.0f}s"
                             + ("; it was cancelled on the server" if cancel_on_timeout else "; it is still queued there")
                             + ". Pass a larger --timeout (CPU-only servers and long videos take a while).",
                             prompt_id) from None
    finally:
        if ws is not None:
            ws.close()
    t_done = time.perf_counter()
    history = {}
    for _ in range(50):  # /history is written right after the final message
        history = _history(comfy, prompt_id)
        if (history.get("status") or {}).get("completed") is not None:
            break
        time.sleep(0.1)
    for kind, data in (history.get("status") or {}).get("messages", []):
        if kind == "execution_error":
            raise describe_execution_error(data, filled)
    entry = _video_entry(history)
    t1 = time.perf_counter()
    data = comfy.download(entry)
    t_download = time.perf_counter() - t1
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        (out.parent / Path(entry["filename"]).name).write_bytes(data)
    start = marks.get("start", t_submit)
    result = {
        "video": {
            "url": f"{comfy.base}/view?{comfy.view_query(entry)}",
            "content_type": mimetypes.guess_type(entry["filename"])[0] or "application/octet-stream",
            "file_name": Path(entry["filename"]).name,
            "file_size": len(data),
        },
        "seed": filled.seed,
        "timings": {
            "upload": round(t_upload, 3),
            "queue": round(start - t_submit, 3),
            "inference": round(t_done - start, 3),
            "download": round(t_download, 3),
            "total": round(time.perf_counter() - t_total, 3),
        },
    }
    if out is not None:
        out.write_text(json.dumps(result, indent=2) + "\n")
    progress.say(f"done: {result['video']['file_name']} ({len(data) / 1e6:.2f} MB) in {result['timings']['total']:.1f}s")
    return result


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("endpoint", choices=sorted(ENDPOINTS), help="which hosted endpoint's request this is")
    p.add_argument("request", help="request JSON file, '-' for stdin, or the JSON itself")
    p.add_argument("--server", default=os.environ.get("COMFYUI_SERVER", "http://127.0.0.1:8188"),
                   help="ComfyUI's address (default $COMFYUI_SERVER or http://127.0.0.1:8188)")
    p.add_argument("--out", default="result.json",
                   help="where to write the result JSON; the video is saved beside it (default result.json)")
    p.add_argument("--workflow", help="API-format workflow to fill instead of the endpoint's own")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait for the job (default 3600)")
    p.add_argument("--http-timeout", type=float, default=30.0, help="seconds per HTTP call (default 30)")
    p.add_argument("--no-websocket", action="store_true", help="poll /history instead of following /ws")
    p.add_argument("--keep-on-timeout", action="store_true", help="leave the job on the server after a timeout")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return p.parse_args(argv)


def _read_request(text: str) -> dict:
    if text == "-":
        raw = sys.stdin.read()
    elif text.lstrip().startswith("{"):
        raw = text
    else:
        path = Path(text)
        if not path.is_file():
            raise RequestError(f"request file {path} not found")
        raw = path.read_text()
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise RequestError(f"the request is not valid JSON: {exc}") from None


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        request = _read_request(args.request)
        result = run(args.endpoint, request, args.server, Path(args.out), workflow=args.workflow,
                     timeout=args.timeout, http_timeout=args.http_timeout, use_websocket=not args.no_websocket,
                     quiet=args.quiet, cancel_on_timeout=not args.keep_on_timeout)
    except ClientError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
