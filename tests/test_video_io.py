"""Video files -> IMAGE batches (pose/video_io.py) and the pack's Get Video Components node.

A file with no video stream (an empty or cut-off upload), an audio-only file or bytes that are
no video must each give a message naming the file, the problem and what to load; good files
must give what ComfyUI's own node gives (uint8 / 255, the stream's fps, float audio), in less
memory (measured by benchmarks/video_decode.py in fresh processes).
"""
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

from poseanimate.headless.core_nodes import Video
from poseanimate.nodes.video import NODE_CLASS_MAPPINGS
from poseanimate.pose import video_io

av = pytest.importorskip("av")
ROOT = Path(__file__).resolve().parents[1]
NODE = NODE_CLASS_MAPPINGS["PoseAnimateVideoComponents"]


def _clip(frames=5, h=48, w=64):
    t = np.arange(frames)[:, None, None, None]
    return ((np.indices((h, w)).sum(0)[None, ..., None] * 3 + t * 20 + np.array([0, 60, 120])) % 256).astype(np.uint8)


def write_clip_with_sound(path: Path, frames=6, fps=12, rate=16000, video=True) -> Path:
    """An mp4 with a 440 Hz stereo tone (AAC) and, when ``video``, H.264 frames."""
    with av.open(str(path), "w") as container:
        vs = None
        if video:
            vs = container.add_stream("libx264", rate=fps)
            vs.width, vs.height, vs.pix_fmt = 64, 48, "yuv420p"
        audio = container.add_stream("aac", rate=rate, layout="stereo")
        seconds = frames / fps
        tone = (0.5 * np.sin(2 * np.pi * 440 * np.arange(int(rate * seconds)) / rate)).astype(np.float32)
        planes = np.stack([tone, tone])
        for start in range(0, planes.shape[1], 1024):
            chunk = np.ascontiguousarray(planes[:, start:start + 1024])
            frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="stereo")
            frame.sample_rate, frame.pts, frame.time_base = rate, start, Fraction(1, rate)
            for packet in audio.encode(frame):
                container.mux(packet)
        for packet in audio.encode():
            container.mux(packet)
        if vs is not None:
            for frame in _clip(frames):
                for packet in vs.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    container.mux(packet)
            for packet in vs.encode():
                container.mux(packet)
    return path


def _no_stream(path: Path) -> Path:
    """What an upload cut off before its first frame looks like: a container with no video stream."""
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        container.start_encoding()
    return path


def test_frames_equal_comfyuis_conversion_and_fps(tmp_path):
    path = video_io.write_mp4(tmp_path / "clip.mp4", _clip(), fps=12.5)
    images, audio, fps = video_io.decode_components(str(path), "clip.mp4")
    raw, raw_fps = video_io.read_video(path)
    assert images.dtype == torch.float32 and images.shape == (5, 48, 64, 3) and images.is_contiguous()
    assert torch.equal(images, torch.from_numpy(raw) / 255.0)  # ComfyUI's own formula, bit for bit
    assert fps == raw_fps == 12.5 and audio is None


def test_audio_comes_as_comfyuis_audio_dict(tmp_path):
    images, audio, fps = video_io.decode_components(str(write_clip_with_sound(tmp_path / "talk.mp4")), "talk.mp4")
    assert images.shape[0] == 6 and fps == 12
    wave = audio["waveform"]
    assert audio["sample_rate"] == 16000 and wave.dtype == torch.float32 and wave.shape[:2] == (1, 2)
    assert wave.shape[2] >= 0.4 * 16000  # half a second of sound, give or take the codec's padding
    assert 0.3 < float(wave.abs().max()) < 0.7  # the tone's amplitude (0.5), as float, not int16


@pytest.mark.parametrize("kind,words", [
    ("no_stream", ("no video stream", "0 frames", "plays")),
    ("audio_only", ("no video stream", "audio", "plays")),
    ("garbage", ("cannot be read as a video", "plays")),
    ("empty_file", ("cannot be read as a video", "plays")),
])
def test_files_without_frames_say_what_is_wrong(tmp_path, kind, words):
    path = tmp_path / f"{kind}.mp4"
    if kind == "no_stream":
        _no_stream(path)
    elif kind == "audio_only":
        write_clip_with_sound(path, video=False)
    elif kind == "garbage":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    else:
        path.write_bytes(b"")
    for read in (lambda: video_io.decode_components(str(path), path.name), lambda: video_io.read_video(path)):
        with pytest.raises(video_io.VideoFileError) as exc:
            read()
        message = str(exc.value)
        assert path.name in message and all(w in message for w in words), message


def test_a_file_object_source_works(tmp_path):
    """ComfyUI's VideoFromFile may hold an in-memory file (BytesIO) instead of a path."""
    import io

    data = video_io.write_mp4(tmp_path / "clip.mp4", _clip(3), fps=8).read_bytes()
    images, _, fps = video_io.decode_components(io.BytesIO(data))
    assert images.shape[0] == 3 and fps == 8


def test_node_on_in_memory_videos():
    """Videos that are no file (Create Video, the headless executor) give their components; 0 frames is refused."""
    frames = torch.rand(4, 8, 10, 3)
    images, audio, fps = NODE().split(Video(frames, 15.0))
    assert images is frames and audio is None and fps == 15.0
    with pytest.raises(video_io.VideoFileError, match="0 frames"):
        NODE().split(Video(torch.zeros(0, 3, 0, 0), 15.0))  # what ComfyUI's decoder returns for no frames
    spec = NODE.INPUT_TYPES()["required"]
    assert list(spec) == ["video"] and NODE.RETURN_TYPES == ("IMAGE", "AUDIO", "FLOAT")
    assert NODE.RETURN_NAMES == ("images", "audio", "fps")  # the outputs of ComfyUI's node, slot for slot


def test_decoding_holds_the_clip_about_once_where_comfyuis_method_holds_it_twice():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import video_decode

    result = video_decode.compare(frames=30, width=960, height=544)
    pack, comfy = result["pack"], result["comfyui"]
    assert pack["frames"] == comfy["frames"] == 30
    assert pack["ratio"] <= 1.6, result  # uint8 frames + one float buffer (+ the decoder's own pages)
    assert pack["ratio"] < 0.7 * comfy["ratio"], result


@pytest.mark.parametrize("rotation,turns", [(-90, 3), (90, 1), (180, 2), (0, 0)])
def test_phone_videos_come_upright(tmp_path, rotation, turns):
    """A display matrix of -90 degrees (ffprobe's "rotation of -90.00 degrees": an upright phone video,
    stored landscape) is turned 90 degrees clockwise, as players and ffmpeg show it."""
    stored = np.zeros((3, 32, 64, 3), np.uint8)
    stored[:, :8, :16] = 255  # a white block in the top-left corner of the stored frame
    path = video_io.write_mp4(tmp_path / f"phone_{rotation}.mp4", stored, 8, display_rotation=rotation)
    images, _, _ = video_io.decode_components(str(path), path.name)
    raw, _ = video_io.read_video(path)
    expected = np.rot90(stored, turns, axes=(1, 2))
    assert images.shape[1:3] == expected.shape[1:3] and raw.shape == expected.shape
    assert np.abs(raw.astype(int) - expected).mean() < 4  # H.264 at its default quality
    assert torch.equal(images, torch.from_numpy(raw) / 255.0)
    if rotation == -90:  # clockwise: the top-left block ends up top-right, the frame portrait
        assert raw.shape[1:3] == (64, 32) and raw[:, :16, -8:].mean() > 200 and raw[:, -16:, :8].mean() < 50


def test_a_clip_too_large_for_free_memory_is_refused_before_decoding(tmp_path, monkeypatch):
    from poseanimate.models.runtime import placement
    from poseanimate.pose.frames import NotEnoughMemoryError

    path = video_io.write_mp4(tmp_path / "long.mp4", _clip(6), fps=12)
    monkeypatch.setattr(placement, "available_memory", lambda: 64 * 48 * 3 * 5 * 6 - 1)  # one byte short
    with pytest.raises(NotEnoughMemoryError) as exc:
        video_io.decode_components(str(path), "long.mp4")
    message = str(exc.value)
    assert "long.mp4: 6 frames of 64x48" in message and "GiB is free" in message and "Trim the video" in message
    raw, _ = video_io.read_video(path)  # uint8 frames (2 bytes a sample at the peak) still fit
    assert raw.shape[0] == 6 and video_io.read_video(path, max_frames=2)[0].shape[0] == 2
    monkeypatch.setattr(placement, "available_memory", lambda: None)  # unknown: no check
    assert video_io.decode_components(str(path))[0].shape[0] == 6


def test_decoding_reports_progress_and_can_be_cancelled(tmp_path):
    path = video_io.write_mp4(tmp_path / "clip.mp4", _clip(6), fps=12)
    seen = []

    def progress(total):
        seen.append(total)
        return lambda n: seen.append(n)

    video_io.decode_components(str(path), "clip.mp4", progress=progress)
    assert seen == [6] + [1] * 6

    class Cancelled(Exception):
        pass

    def cancel_after(total):
        def step(n):
            raise Cancelled  # what ComfyUI's interrupt check raises, from inside the step
        return step

    with pytest.raises(Cancelled):
        video_io.decode_components(str(path), "clip.mp4", progress=cancel_after)


@pytest.mark.parametrize("rotation", [-90, 90, 180])
def test_turned_like_opencv_the_official_unianimate_reader(tmp_path, rotation):
    """UniAnimate's run_align_pose.py reads driving videos with cv2.VideoCapture, which applies the
    display matrix; ours gives the same frames (decord, One-to-All's reader, does too: checked by hand)."""
    cv2 = pytest.importorskip("cv2")
    clip = _clip(3, 48, 80)
    path = video_io.write_mp4(tmp_path / f"turned_{rotation}.mp4", clip, 8, display_rotation=rotation)
    cap = cv2.VideoCapture(str(path))
    theirs = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        theirs.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    ours, _ = video_io.read_video(path)
    assert ours.shape == np.stack(theirs).shape
    assert np.abs(ours.astype(int) - np.stack(theirs)).mean() < 3  # same stream, two YUV->RGB conversions
