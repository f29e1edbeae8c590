"""In-process equivalents of the ComfyUI core nodes the shipped workflows use, for runs without
ComfyUI: LoadImage, LoadVideo, GetVideoComponents, CreateVideo, SaveVideo (video through PyAV).

Same inputs and outputs as ComfyUI's (IMAGE ``[T,H,W,3]`` float 0..1, MASK ``[T,H,W]``, a VIDEO
carrying frames and fps). Differences: audio is not carried (CreateVideo keeps what it is given,
SaveVideo writes picture only), and every video is H.264 mp4 whatever ``format`` / ``codec`` say.
A saved video is written to a temporary name and linked into place, so an interrupted run never
leaves a partial file and two runs never overwrite each other's output.
"""
from __future__ import annotations

import os
import re
import uuid
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch


class Video:
    """What ComfyUI's VIDEO type carries for these graphs: frames, fps, audio."""

    def __init__(self, images, fps, audio=None):
        self.images, self.fps, self.audio = images, fps, audio

    def get_components(self):
        """ComfyUI's VideoInput.get_components (what the pack's Get Video Components calls)."""
        return SimpleNamespace(images=self.images, audio=self.audio, frame_rate=self.fps)


def inside(root, name: str, what: str) -> Path:
    """``name`` as a file inside ``root``; never a free path."""
    root = Path(root).resolve()
    path = (root / name).resolve()
    if not name or Path(name).is_absolute() or not path.is_relative_to(root):
        raise ValueError(f"{what} {name!r} must be a name inside {root}")
    return path


def to_uint8(images: torch.Tensor) -> np.ndarray:
    return images.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8).cpu().numpy()


def save_new(folder: Path, stem: str, ext: str, write) -> Path:
    """``write(tmp_path)`` then link it to ``<stem>_<counter:05>_.<ext>`` with the next free counter
    (ComfyUI's naming); the link fails instead of replacing a file, so nothing is overwritten."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{stem}.{uuid.uuid4().hex[:8]}.part.{ext}"
    try:
        write(tmp)
        pattern = re.compile(rf"{re.escape(stem)}_(\d+)_\.{re.escape(ext)}$")
        counter = 1 + max((int(m.group(1)) for p in folder.iterdir() if (m := pattern.match(p.name))), default=0)
        while True:
            final = folder / f"{stem}_{counter:05d}_.{ext}"
            try:
                os.link(tmp, final)
                return final
            except FileExistsError:
                counter += 1
    finally:
        tmp.unlink(missing_ok=True)


class CoreNodes:
    """The state the core nodes share in one executor: media sources and the output folder."""

    def __init__(self, image=None, clip=None, fps=12.0, input_dir=None, output_dir=None):
        self.image, self.clip, self.fps = image, clip, fps
        self.input_dir = Path(input_dir) if input_dir else None
        self.output_dir = Path(output_dir) if output_dir else None
        self.saved: list[tuple[str, Video]] = []  # (filename_prefix, video) per SaveVideo call
        self.files: list[Path] = []  # files SaveVideo wrote

    def input_file(self, name: str) -> Path:
        if self.input_dir is None:
            raise ValueError(f"{name!r}: no input folder given to read media from")
        path = inside(self.input_dir, name, "input file")
        if not path.is_file():
            raise FileNotFoundError(f"{name!r} not found in the input folder {self.input_dir}")
        return path

    def load_image(self, image):
        if self.image is not None:
            return (self.image, torch.zeros(self.image.shape[:3]))
        from PIL import Image, ImageOps

        with Image.open(self.input_file(image)) as im:
            im = ImageOps.exif_transpose(im)
            rgba = np.asarray(im.convert("RGBA"))
        pixels = torch.from_numpy(rgba[..., :3].copy()).float().div(255)[None]
        mask = 1.0 - torch.from_numpy(rgba[..., 3].copy()).float().div(255)[None] if "A" in im.getbands() else \
            torch.zeros(pixels.shape[:3])
        return (pixels, mask)

    def load_video(self, file):
        if self.clip is not None:
            return (Video(self.clip, self.fps),)
        from ..pose import video_io

        path = self.input_file(file)
        images, audio, fps = video_io.decode_components(str(path), path.name)
        return (Video(images, fps, audio),)

    def get_components(self, video):
        return (video.images, video.audio, video.fps)

    def create_video(self, images, fps, audio=None):
        return (Video(images, fps, audio),)

    def save_video(self, video, filename_prefix="video/ComfyUI", format="auto", codec="auto"):
        self.saved.append((filename_prefix, video))
        if self.output_dir is None:
            return {"ui": {"images": []}, "result": ()}
        from ..pose import video_io

        target = inside(self.output_dir, filename_prefix.strip().lstrip("/\\") or "video", "filename_prefix")
        frames = to_uint8(video.images)
        path = save_new(target.parent, target.name, "mp4", lambda tmp: video_io.write_mp4(tmp, frames, fps=float(video.fps)))
        self.files.append(path)
        sub = path.parent.relative_to(self.output_dir.resolve()).as_posix()
        return {"ui": {"images": [{"filename": path.name, "subfolder": "" if sub == "." else sub, "type": "output"}]},
                "result": ()}


def _node(name, inputs, returns, method, output=False):
    """A node class in ComfyUI's form whose FUNCTION calls ``CoreNodes.<method>`` of the executor's state."""

    def run(self, **kw):
        return getattr(self.state, method)(**kw)

    return type(name, (), {"INPUT_TYPES": classmethod(lambda cls: inputs), "RETURN_TYPES": returns,
                           "FUNCTION": "run", "OUTPUT_NODE": output, "run": run, "state": None})


def node_classes(state: CoreNodes) -> dict:
    """The core node classes bound to one executor's state."""
    classes = {
        "LoadImage": _node("LoadImage", {"required": {"image": ("STRING",)}}, ("IMAGE", "MASK"), "load_image"),
        "LoadVideo": _node("LoadVideo", {"required": {"file": ("STRING",)}}, ("VIDEO",), "load_video"),
        "GetVideoComponents": _node("GetVideoComponents", {"required": {"video": ("VIDEO",)}},
                                    ("IMAGE", "AUDIO", "FLOAT"), "get_components"),
        "CreateVideo": _node("CreateVideo", {"required": {"images": ("IMAGE",), "fps": ("FLOAT",)},
                                             "optional": {"audio": ("AUDIO",)}}, ("VIDEO",), "create_video"),
        "SaveVideo": _node("SaveVideo", {"required": {"video": ("VIDEO",), "filename_prefix": ("STRING",),
                                                      "format": ("STRING",), "codec": ("STRING",)}},
                           (), "save_video", output=True),
    }
    for cls in classes.values():
        cls.state = state
    return classes


NAMES = ("LoadImage", "LoadVideo", "GetVideoComponents", "CreateVideo", "SaveVideo")
