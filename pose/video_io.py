"""Video files in and out (PyAV), for the command-line job and the tests.

Inside ComfyUI, loading and saving belong to ComfyUI's own Load/Save Video nodes; the pack's
Get Video Components reads their file here (clear errors for videos without frames, one float
buffer), and the headless demo reads and writes its videos here.
"""
from __future__ import annotations

import io
import logging
from fractions import Fraction
from pathlib import Path

import numpy as np

_log = logging.getLogger("PoseAnimate")


def write_mp4(path: str | Path, frames: np.ndarray, fps: float = 16.0, crf: int = 18, display_rotation: int = 0) -> Path:
    """Write (T, H, W, 3) uint8 RGB frames as an H.264 mp4 (even sizes padded by the encoder rules).

    ``display_rotation``: a display matrix (degrees counter-clockwise, as phones write it) telling
    players to turn the stored frames; 0 writes none."""
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = np.ascontiguousarray(frames, np.uint8)
    t, h, w, _ = frames.shape
    if h % 2 or w % 2:  # yuv420p needs even sizes
        frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf)}
        if display_rotation:
            stream.set_display_rotation(display_rotation)
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


class VideoFileError(ValueError):
    """A video that cannot give frames; the message names the file and what to load instead."""


LOAD_A_VIDEO = "load a video that plays in a media player (an H.264 .mp4, .webm or .mov with at least one frame)"


def _video_stream(container, name: str):
    """The first video stream, or a VideoFileError that says the file has none (0 frames)."""
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams}) or ["no streams at all"]
        raise VideoFileError(f"{name} has no video stream (0 frames; it holds {', '.join(kinds)}): it is empty, "
                             f"audio-only or was cut off while being written; {LOAD_A_VIDEO}.")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"  # frame threads: 1080p decodes several times faster
    return stream


def _open(source, name: str):
    import av

    if isinstance(source, io.IOBase):
        source.seek(0)
    try:
        return av.open(source if isinstance(source, io.IOBase) else str(source))
    except (av.error.FFmpegError, UnicodeDecodeError) as exc:
        raise VideoFileError(f"{name} cannot be read as a video ({exc}); {LOAD_A_VIDEO}.") from exc


def _decode_rgb(container, stream, name: str, max_frames: int = 0, bytes_per_sample: int = 2,
                progress=None) -> list[np.ndarray]:
    """(H, W, 3) uint8 frames. A file that breaks off part-way keeps the frames before the break (logged).

    ``bytes_per_sample``: what the caller will hold per decoded sample at its peak (refused
    beforehand when the clip's frame count says it cannot fit in the free memory).
    ``progress``: ``progress(total) -> step(n)``, called once per decoded frame (ComfyUI's bar and
    Cancel button: a long 1080p clip takes a while to decode)."""
    import av

    count = _check_memory(container, stream, name, max_frames, bytes_per_sample)
    step = progress(count) if progress is not None and count else None
    frames = []
    try:
        for frame in container.decode(stream):
            turns = quarter_turns(getattr(frame, "rotation", 0))  # PyAV >= 14 reads the display matrix
            if turns and not frames:
                _log.info("%s: turned by %d degrees counter-clockwise, as its display matrix says (a video shot "
                          "upright on a phone)", name, turns * 90)
            pixels = frame.to_ndarray(format="rgb24")
            frames.append(np.ascontiguousarray(np.rot90(pixels, turns)) if turns else pixels)
            if step is not None:
                step(1)
            if max_frames and len(frames) >= max_frames:
                break
    except av.error.FFmpegError as exc:
        if not frames:
            raise VideoFileError(f"{name} cannot be decoded ({exc}); {LOAD_A_VIDEO}.") from exc
        _log.warning("%s: decoding stopped after frame %d (%s); using the %d frames before it",
                     name, len(frames), exc, len(frames))
    if not frames:
        raise VideoFileError(f"{name} has a video stream but 0 frames could be decoded from it; {LOAD_A_VIDEO}.")
    return frames


def expected_frames(container, stream) -> int | None:
    """The clip's frame count from its header (or duration x rate), before decoding; None if unknown."""
    if stream.frames:
        return int(stream.frames)
    rate = stream.average_rate or stream.guessed_rate
    if stream.duration and stream.time_base:
        seconds = float(stream.duration * stream.time_base)
    elif container.duration:
        seconds = container.duration / 1_000_000  # AV_TIME_BASE
    else:
        return None
    return int(round(seconds * float(rate))) if rate else None


def _check_memory(container, stream, name: str, max_frames: int, bytes_per_sample: int) -> int | None:
    """Refuse a clip whose frames cannot fit in the free memory, before any is decoded: a 10-minute
    1080p clip is 450 GB as float frames, and an OOM kill would take the server down with it.
    Returns the expected frame count (None when the header does not tell)."""
    from ..models.runtime.placement import available_memory
    from .frames import NotEnoughMemoryError

    count = expected_frames(container, stream)
    if max_frames and count:
        count = min(count, max_frames)
    free = available_memory()
    width, height = stream.codec_context.width, stream.codec_context.height
    need = (count or 0) * width * height * 3 * bytes_per_sample
    if free is not None and count and need > free:
        raise NotEnoughMemoryError(
            f"{name}: {count} frames of {width}x{height} need {need / 2**30:.1f} GiB in memory but only "
            f"{free / 2**30:.1f} GiB is free. Trim the video to the part you need or lower its resolution "
            "before loading it (a video editor, or e.g. `ffmpeg -i in.mp4 -t 10 -vf scale=-2:720 out.mp4`).")
    return count


def quarter_turns(rotation) -> int:
    """Counter-clockwise quarter turns (``np.rot90``'s k) that make a frame upright.

    ``rotation``: PyAV's ``VideoFrame.rotation``, the display matrix's counter-clockwise angle
    (what ffprobe prints as "rotation of -90.00 degrees"). Phones store a video shot upright as
    landscape frames plus this matrix; players, ffmpeg, OpenCV and decord (the official pipelines'
    readers) turn the frames, PyAV (and so ComfyUI's own video nodes) does not, and a dancer
    filmed upright would reach the pose detector lying on her side.
    """
    return round(float(rotation or 0) / 90) % 4


def _fps(stream) -> float:
    rate = stream.average_rate or stream.guessed_rate
    return float(rate) if rate else 1.0  # ComfyUI's Get Video Components falls back to 1 as well


def read_video(path: str | Path, max_frames: int = 0) -> tuple[np.ndarray, float]:
    """Read a video file -> ((T, H, W, 3) uint8 RGB, fps)."""
    name = Path(path).name
    with _open(path, name) as container:
        stream = _video_stream(container, name)
        return np.stack(_decode_rgb(container, stream, name, max_frames, bytes_per_sample=2)), _fps(stream)


def decode_components(source, name: str = "the video", progress=None):
    """A video file (path or file object) -> (frames, audio, fps) as ComfyUI's Get Video Components gives them.

    frames: (T, H, W, 3) float32 in [0, 1], equal to ComfyUI's ``uint8 / 255.0``; audio: ComfyUI's
    AUDIO dict (float waveform (1, channels, samples), sample_rate) or None. ComfyUI keeps every
    decoded frame as float32 and then stacks them (about 3x the clip at the peak, measured by
    benchmarks/video_decode.py: 22 GB for 300 frames of 1080p); here the frames are kept as uint8
    and copied one by one into a single float buffer (at most 1.25x, about 1.06x measured).
    """
    import torch

    with _open(source, name) as container:
        stream = _video_stream(container, name)
        fps = _fps(stream)
        decoded = _decode_rgb(container, stream, name, bytes_per_sample=5, progress=progress)  # uint8 + float32
        audio = _decode_audio(container, name)
    t, (h, w, c) = len(decoded), decoded[0].shape
    images = torch.empty((t, h, w, c), dtype=torch.float32)
    for i in range(t):
        frame = torch.from_numpy(decoded[i])
        decoded[i] = None  # each uint8 frame is freed once copied
        torch.div(frame, 255.0, out=images[i])
    return images, audio, fps


def _decode_audio(container, name: str):
    """The first audio stream as ComfyUI's AUDIO dict (float planar), or None."""
    import av
    import torch

    if not container.streams.audio:
        return None
    stream = container.streams.audio[0]
    resampler = av.AudioResampler(format="fltp", layout=stream.layout, rate=stream.rate)
    chunks = []
    try:
        container.seek(0)
        for frame in container.decode(stream):
            chunks += [f.to_ndarray() for f in resampler.resample(frame)]
        chunks += [f.to_ndarray() for f in resampler.resample(None)]
    except (av.error.FFmpegError, ValueError) as exc:  # an audio codec PyAV cannot decode or resample
        _log.warning("%s: the audio could not be decoded (%s); the video is used without sound", name, exc)
        return None
    if not chunks:
        return None
    return {"waveform": torch.from_numpy(np.concatenate(chunks, axis=1))[None], "sample_rate": int(stream.rate or 1)}
