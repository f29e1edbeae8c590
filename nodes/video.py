"""Get Video Components with a clear answer for a video that has no frames.

ComfyUI's own node fails with a bare ``IndexError`` on a file without a video stream (an empty
or cut-off upload) and holds the clip two to three times over while it stacks the frames
(benchmarks/video_decode.py). This one has the same inputs and outputs, so the shipped
workflows use it in its place behind ComfyUI's Load Video.
"""
from __future__ import annotations

from pathlib import Path

from ..pose import video_io
from . import host


class VideoComponents:
    """VIDEO -> frames, audio, fps; the decoding and its checks are in pose/video_io.py."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"video": ("VIDEO", {"tooltip": "From ComfyUI's Load Video (or any VIDEO output)"})}}

    RETURN_TYPES = ("IMAGE", "AUDIO", "FLOAT")
    RETURN_NAMES = ("images", "audio", "fps")
    FUNCTION = "split"
    CATEGORY = "PoseAnimate/video"
    DESCRIPTION = ("Frames, audio and frame rate of a video, as ComfyUI's Get Video Components, with a clear "
                   "error for an empty or unreadable video and one float copy of the frames in memory.")

    def split(self, video):
        source = host.video_file_source(video)
        if source is not None:
            name = source if isinstance(source, str) else "the uploaded video"
            return video_io.decode_components(source, _short(name), progress=host.step_callback)
        parts = video.get_components()
        if parts.images.shape[0] == 0:
            raise video_io.VideoFileError(f"the video has 0 frames; {video_io.LOAD_A_VIDEO}.")
        return parts.images, parts.audio, float(parts.frame_rate)


def _short(path: str) -> str:
    """A path as the user picked it in Load Video: the part under the input folder, else the file name."""
    root, target = host.input_directory().resolve(), Path(path).resolve()
    return target.relative_to(root).as_posix() if target.is_relative_to(root) else target.name


NODE_CLASS_MAPPINGS = {"PoseAnimateVideoComponents": VideoComponents}
NODE_DISPLAY_NAME_MAPPINGS = {"PoseAnimateVideoComponents": "Get Video Components (PoseAnimate)"}
