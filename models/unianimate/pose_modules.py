"""UniAnimate-DiT's two pose encoders and the conversions that feed the DiT with them.

Why: the released UniAnimate file carries, next to its LoRA, two small conv stacks whose
``nn.Sequential`` indices are the checkpoint's key names (``dwpose_embedding.{0,2,..,12}``,
``randomref_embedding_pose.{0,2,..,10}``); building them with the same layer order lets the file
load strictly. ``dwpose_embedding`` (3-D convs, 16x spatial and 4x temporal downsampling) turns
the driving pose video into one token per DiT patch, added right after patch embedding;
``randomref_embedding_pose`` (2-D convs, 8x downsampling) turns the reference pose into 20
channels added to the image condition ``y`` (4 mask + 16 latent channels, every latent frame).

Numerics follow the official pipeline: pose pixels 0..255 divided by 255, the first driving pose
repeated 3 times in front (so F = 4k+1 frames become k+1 latent frames), modules in float32, and
both outputs rounded to bfloat16 (the official code does that cast even in a float32 run; pass
``round_bf16=False`` for the unrounded values).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn


from ..runtime.images import to_uint8_rgb

POSE_HIDDEN = 16          # concat_dim * 4 in the official code
REF_POSE_CHANNELS = 20    # = channels of y (4 mask + 16 VAE latent)
POSE_FRONT_PAD = 3        # copies of the first pose put in front of the driving video
SPATIAL_FACTOR = 16       # pose grid = DiT token grid (8x VAE, 2x patch)


def _conv3(cin, cout, stride):
    return nn.Conv3d(cin, cout, 3, stride=stride, padding=1)


class DWPoseEmbedding(nn.Sequential):
    """Driving poses [B, 3, F+3, H, W] (0..1) -> [B, dim, (F-1)/4+1, H/16, W/16].

    The first four convs (indices 0-6) keep the frame count and see one frame either side each,
    so they can run on overlapping chunks of frames with a 4-frame halo and give exactly the
    full-video result: at 720p x 84 frames this avoids ~5 GB float32 activations per layer."""

    TEMPORAL_STRIDE1_END = 8  # modules [0, 8): 4 convs with temporal stride 1, kernel 3, + SiLU
    HALO = 4

    def forward_chunked(self, x: torch.Tensor, chunk_frames: int | None) -> torch.Tensor:
        n = x.shape[2]
        if not chunk_frames or chunk_frames >= n:
            return self(x)
        layers = list(self)
        head, tail = layers[: self.TEMPORAL_STRIDE1_END], layers[self.TEMPORAL_STRIDE1_END:]
        parts = []
        for start in range(0, n, chunk_frames):
            stop = min(start + chunk_frames, n)
            lo, hi = max(0, start - self.HALO), min(n, stop + self.HALO)
            out = x[:, :, lo:hi]  # zero padding at lo/hi is the true padding at the video ends
            for layer in head:
                out = layer(out)
            parts.append(out[:, :, start - lo: stop - lo])
        out = torch.cat(parts, dim=2)
        for layer in tail:
            out = layer(out)
        return out

    def __init__(self, out_dim: int = 5120, hidden: int = POSE_HIDDEN):
        h = hidden
        super().__init__(
            _conv3(3, h, 1), nn.SiLU(),
            _conv3(h, h, 1), nn.SiLU(),
            _conv3(h, h, 1), nn.SiLU(),
            _conv3(h, h, (1, 2, 2)), nn.SiLU(),
            _conv3(h, h, 2), nn.SiLU(),
            _conv3(h, h, 2), nn.SiLU(),
            nn.Conv3d(h, out_dim, (1, 2, 2), stride=(1, 2, 2)))


class RandomRefPoseEmbedding(nn.Sequential):
    """Reference pose [B, 3, H, W] (0..1) -> [B, 20, H/8, W/8]."""

    def __init__(self, out_channels: int = REF_POSE_CHANNELS, hidden: int = POSE_HIDDEN):
        h = hidden

        def conv(cin, cout, stride):
            return nn.Conv2d(cin, cout, 3, stride=stride, padding=1)

        super().__init__(
            conv(3, h, 1), nn.SiLU(),
            conv(h, h, 1), nn.SiLU(),
            conv(h, h, 1), nn.SiLU(),
            conv(h, h, 2), nn.SiLU(),
            conv(h, h, 2), nn.SiLU(),
            conv(h, out_channels, 2))


def _as_float_pixels(x) -> torch.Tensor:
    """uint8 array/tensor or float 0..255 values -> float32 tensor of 0..255 values."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not torch.is_tensor(x):
        raise TypeError(f"pose images must be a tensor or numpy array, got {type(x).__name__}")
    if not (x.dtype == torch.uint8 or x.is_floating_point()):
        raise TypeError(f"pose images must be uint8 (0..255) or float 0..255 values, got {x.dtype}")
    return x.to(torch.float32)


def comfy_image_to_pose_pixels(image: torch.Tensor) -> torch.Tensor:
    """ComfyUI IMAGE [T, H, W, 3] float 0..1 -> uint8 [T, H, W, 3] (what the official script reads
    from its pose JPGs)."""
    return torch.from_numpy(to_uint8_rgb(image, "pose images"))


def official_pose_video_to_frames(dwpose_data: torch.Tensor) -> torch.Tensor:
    """The official pipeline's ``dwpose_data`` [3, F, H, W] -> this module's [F, H, W, 3]."""
    return dwpose_data.permute(1, 2, 3, 0)


def _check_grid(h: int, w: int, what: str) -> None:
    if h % SPATIAL_FACTOR or w % SPATIAL_FACTOR:
        raise ValueError(f"{what} is {h}x{w} (HxW); UniAnimate needs both sides to be multiples of "
                         f"{SPATIAL_FACTOR} (resize the poses to the generation size, e.g. 832x480)")


def pose_video_input(frames) -> torch.Tensor:
    """[F, H, W, 3] or [B, F, H, W, 3] pose pixels (0..255) -> the encoder input
    [B, 3, F+3, H, W] in 0..1, first frame repeated 3 times in front."""
    x = _as_float_pixels(frames)
    if x.ndim == 4:
        x = x.unsqueeze(0)
    if x.ndim != 5 or x.shape[-1] != 3:
        raise ValueError(f"pose video must be [F, H, W, 3] or [B, F, H, W, 3], got {tuple(x.shape)}")
    f, h, w = x.shape[1:4]
    if f < 1 or (f - 1) % 4:
        raise ValueError(f"pose video has {f} frames; UniAnimate needs 4k+1 frames (1, 5, ..., 81) "
                         f"so they match the latent frames")
    _check_grid(h, w, "pose video")
    x = x.permute(0, 4, 1, 2, 3)  # B, 3, F, H, W
    x = torch.cat([x[:, :, :1].expand(-1, -1, POSE_FRONT_PAD, -1, -1), x], dim=2)
    return x / 255.0


def reference_pose_input(image) -> torch.Tensor:
    """[H, W, 3] or [B, H, W, 3] pose pixels (0..255) -> [B, 3, H, W] in 0..1."""
    x = _as_float_pixels(image)
    if x.ndim == 3:
        x = x.unsqueeze(0)
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"reference pose must be [H, W, 3] or [B, H, W, 3], got {tuple(x.shape)}")
    _check_grid(x.shape[1], x.shape[2], "reference pose")
    return (x / 255.0).permute(0, 3, 1, 2)


class PoseEncoders(nn.Module):
    """Both UniAnimate pose modules; state-dict keys are the checkpoint's own
    (``dwpose_embedding.*``, ``randomref_embedding_pose.*``)."""

    def __init__(self, dim: int = 5120, ref_channels: int = REF_POSE_CHANNELS, hidden: int = POSE_HIDDEN):
        super().__init__()
        self.dwpose_embedding = DWPoseEmbedding(dim, hidden)
        self.randomref_embedding_pose = RandomRefPoseEmbedding(ref_channels, hidden)

    @property
    def dim(self) -> int:
        return self.dwpose_embedding[-1].out_channels

    @classmethod
    def from_state_dict(cls, sd: dict, device=None, dtype=torch.float32, source: str = "") -> "PoseEncoders":
        """Build with widths read from the shapes and load ``sd`` strictly (meta tensors stay
        meta, so full-size manifests check without memory)."""
        from ..runtime.build import empty_parameters, load_checked
        from ..runtime.weights import WanWeightsError

        where = f"{source}: " if source else ""
        try:
            dim = sd["dwpose_embedding.12.weight"].shape[0]
            hidden = sd["dwpose_embedding.0.weight"].shape[0]
            ref = sd["randomref_embedding_pose.10.weight"].shape[0]
        except KeyError as exc:
            raise WanWeightsError(f"{where}the UniAnimate pose modules lack {exc}; pick the UniAnimate "
                                  f"file (UniAnimate-Wan2.1-14B-Lora-12000.ckpt or its safetensors "
                                  f"conversion)") from exc
        with empty_parameters():
            model = cls(dim, ref, hidden)
        load_checked(model, {k: v.to(dtype) for k, v in sd.items()},
                     f"{where}UniAnimate pose modules (official structure)")
        if device is not None:
            model = model.to(device)
        return model.eval().requires_grad_(False)

    def _param(self) -> torch.Tensor:
        return self.dwpose_embedding[0].weight

    def embed_pose_video(self, frames, round_bf16: bool = True, chunk_frames: int | None = 16) -> torch.Tensor:
        """Driving poses [F, H, W, 3] / [B, F, H, W, 3] (0..255) -> [B, dim, T, H/16, W/16].
        ``chunk_frames``: full-resolution layers run on this many frames at a time (None: all)."""
        p = self._param()
        out = self.dwpose_embedding.forward_chunked(pose_video_input(frames).to(p.device, p.dtype), chunk_frames)
        return out.to(torch.bfloat16).to(out.dtype) if round_bf16 else out

    def pose_tokens(self, frames, round_bf16: bool = True, chunk_frames: int | None = 16) -> torch.Tensor:
        """Driving poses -> pose tokens [B, T*(H/16)*(W/16), dim], token order (f h w) as the
        DiT's patches."""
        emb = self.embed_pose_video(frames, round_bf16, chunk_frames)
        return emb.flatten(2).transpose(1, 2).contiguous()

    def embed_reference_pose(self, image, round_bf16: bool = True) -> torch.Tensor:
        """Reference pose [H, W, 3] / [B, H, W, 3] (0..255) -> [B, 20, 1, H/8, W/8]."""
        p = self._param()
        out = self.randomref_embedding_pose(reference_pose_input(image).to(p.device, p.dtype)).unsqueeze(2)
        return out.to(torch.bfloat16).to(out.dtype) if round_bf16 else out

    def add_reference_pose(self, y: torch.Tensor, image, round_bf16: bool = True) -> torch.Tensor:
        """``y`` [B, 20, T, H/8, W/8] + the reference-pose embedding on all 20 channels and every
        latent frame (both CFG passes use the result)."""
        emb = self.embed_reference_pose(image, round_bf16)
        if y.ndim != 5 or y.shape[1] != emb.shape[1] or y.shape[-2:] != emb.shape[-2:]:
            raise ValueError(f"image condition y {tuple(y.shape)} does not fit the reference-pose "
                             f"embedding {tuple(emb.shape)}; the reference pose must have the "
                             f"generation size (y is [B, 20, T, H/8, W/8])")
        return y + emb.to(device=y.device, dtype=y.dtype)
