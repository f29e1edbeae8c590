"""Tiled encode/decode with the Wan VAE, and the latent normalisation around it.

diffusers' ``AutoencoderKLWan`` already tiles spatially (``enable_tiling``): it
cuts the frames into overlapping tiles, runs each through the causal encoder or
decoder over all frames, and blends neighbours linearly across the overlap. What
it lacks, added here:

* validation: tile and stride must be multiples of the spatial compression (8)
  and the stride smaller than the tile; otherwise diffusers crops the input at
  one stride and places latents at another, silently shifting tiles;
* a scoped switch (``tiled(vae, ...)``) that restores the previous setting, so a
  shared VAE object is never left tiled or untiled behind a caller's back;
* ``WanVAE``: the VAE with its placement (offload after use), dtype and tiling,
  and the normalisation the Wan pipelines apply to latents
  (``(z - latents_mean) * (1 / latents_std)``).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import torch

from ..runtime.placement import Placement


@dataclass(frozen=True)
class TileConfig:
    """Spatial tiles in pixels: ``tile_*`` = tile size, ``stride_*`` = distance between tiles."""

    tile_height: int = 256
    tile_width: int = 256
    stride_height: int = 192
    stride_width: int = 192

    def validate(self, compression: int = 8) -> "TileConfig":
        for name in ("tile_height", "tile_width", "stride_height", "stride_width"):
            value = getattr(self, name)
            if int(value) != value or value <= 0 or value % compression:
                raise ValueError(f"VAE {name} must be a positive multiple of {compression} pixels, got {value}.")
        if self.stride_height >= self.tile_height or self.stride_width >= self.tile_width:
            raise ValueError(
                f"VAE tile stride ({self.stride_height}x{self.stride_width}) must be smaller than the tile "
                f"({self.tile_height}x{self.tile_width}) so neighbouring tiles overlap and can be blended."
            )
        return self

    @classmethod
    def from_latent(cls, tile: tuple[int, int], stride: tuple[int, int], compression: int = 8) -> "TileConfig":
        """From latent-pixel sizes (how DiffSynth states them, e.g. tile 30x52, stride 15x26)."""
        return cls(tile[0] * compression, tile[1] * compression, stride[0] * compression, stride[1] * compression)


DEFAULT_TILES = TileConfig()


def _compression(vae) -> int:
    return int(getattr(vae, "spatial_compression_ratio", 8) or 8)


def set_tiling(vae, tiles: TileConfig | None) -> None:
    """Switch diffusers' tiling on with ``tiles`` (validated) or off with None."""
    if not hasattr(vae, "enable_tiling"):
        raise TypeError(f"{type(vae).__name__} has no enable_tiling(); a diffusers AutoencoderKLWan is required.")
    if tiles is None:
        vae.use_tiling = False
        return
    tiles.validate(_compression(vae))
    vae.enable_tiling(
        tile_sample_min_height=tiles.tile_height,
        tile_sample_min_width=tiles.tile_width,
        tile_sample_stride_height=tiles.stride_height,
        tile_sample_stride_width=tiles.stride_width,
    )


@contextlib.contextmanager
def tiled(vae, tiles: TileConfig | None) -> Iterator[None]:
    """Tiling as given for the duration of the block; the previous state is restored after."""
    saved = (
        vae.use_tiling,
        vae.tile_sample_min_height,
        vae.tile_sample_min_width,
        vae.tile_sample_stride_height,
        vae.tile_sample_stride_width,
    )
    set_tiling(vae, tiles)
    try:
        yield
    finally:
        (
            vae.use_tiling,
            vae.tile_sample_min_height,
            vae.tile_sample_min_width,
            vae.tile_sample_stride_height,
            vae.tile_sample_stride_width,
        ) = saved


def latent_stats(vae, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and *reciprocal* std of the Wan latent space, ``[1, C, 1, 1, 1]``.

    The reciprocal is taken in float32 before the cast, as the Wan pipelines do,
    so ``(z - mean) * inv_std`` matches them bit for bit.
    """
    mean = torch.tensor(vae.config.latents_mean, device=device, dtype=torch.float32).view(1, -1, 1, 1, 1)
    inv_std = 1.0 / torch.tensor(vae.config.latents_std, device=device, dtype=torch.float32).view(1, -1, 1, 1, 1)
    return mean.to(dtype), inv_std.to(dtype)


class WanVAE:
    """A Wan VAE ready for the pipelines: placement, dtype, tiling and latent normalisation.

    ``encode`` takes video in [-1, 1] as ``[B, 3, F, H, W]`` and returns normalised
    latents; ``decode`` the inverse (clamped to [-1, 1]).
    """

    def __init__(self, vae, device="cpu", dtype: torch.dtype = torch.float32, offload_device="cpu", offload_after_use: bool = True, tiles: TileConfig | None = None, manager=None):
        self.vae = vae
        self.dtype = dtype
        self.tiles = tiles.validate(_compression(vae)) if tiles is not None else None
        self.placement = Placement(vae, device, offload_device, offload_after_use, dtype=dtype, manager=manager)

    @property
    def device(self) -> torch.device:
        return self.placement.device

    @property
    def compression(self) -> tuple[int, int]:
        """(temporal, spatial) compression factors."""
        cfg = self.vae.config
        return int(getattr(cfg, "scale_factor_temporal", 4) or 4), _compression(self.vae)

    def _check_video(self, video: torch.Tensor) -> None:
        if video.ndim != 5 or video.shape[1] != 3:
            raise ValueError(f"VAE input must be [B, 3, F, H, W] in [-1, 1], got shape {tuple(video.shape)}.")
        s = self.compression[1]
        if video.shape[-1] % s or video.shape[-2] % s:
            raise ValueError(f"Frame size {video.shape[-2]}x{video.shape[-1]} must be a multiple of {s} for the Wan VAE.")

    @torch.no_grad()
    def encode(self, video: torch.Tensor, sample: bool = False, generator: torch.Generator | None = None, tiles: TileConfig | None | str = "default") -> torch.Tensor:
        """Normalised latents ``[B, 16, (F-1)//4+1, H/8, W/8]`` (distribution mode unless ``sample``)."""
        self._check_video(video)
        chosen = self.tiles if tiles == "default" else tiles
        with self.placement.use() as vae, tiled(vae, chosen):
            x = video.to(self.device, self.dtype)
            dist = vae.encode(x).latent_dist
            z = dist.sample(generator) if sample else dist.mode()
            mean, inv_std = latent_stats(vae, z.device, z.dtype)
            return ((z - mean) * inv_std).float()

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, tiles: TileConfig | None | str = "default") -> torch.Tensor:
        """Video ``[B, 3, F, H, W]`` in [-1, 1] (float32) from normalised latents."""
        if latents.ndim != 5:
            raise ValueError(f"Latents must be [B, C, F, H, W], got shape {tuple(latents.shape)}.")
        chosen = self.tiles if tiles == "default" else tiles
        with self.placement.use() as vae, tiled(vae, chosen):
            z = latents.to(self.device, self.dtype)
            mean, inv_std = latent_stats(vae, z.device, z.dtype)
            return vae.decode(z / inv_std + mean).sample.float()

    def release(self) -> None:
        """Move the VAE off the accelerator and free its cached memory."""
        self.placement.release()
