"""Pose stack: detection, keypoint format, alignment, rendering, frame handling (no ComfyUI imports)."""
