"""The SD1.5 diffusers UNet with AnimateDiff motion modules, run on all frames at once.

Placement follows ADE / the original AnimateDiff (and diffusers' UNetMotionModel): a
motion module after each resnet(+attention) pair of every down and up block (before the
down/up-sampler) and, for v2, after the mid block's attention. The forward walks the
diffusers blocks itself instead of patching them, so the wrapped UNet stays a plain
``UNet2DConditionModel`` (SD LoRAs and ControlNets see the usual names).
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn

from .motion_loader import MotionModuleSet


@contextlib.contextmanager
def groupnorm_across_frames(module: nn.Module, frames: int):
    """ADE's GroupNorm hack on every ``nn.GroupNorm`` inside ``module`` for the duration.

    Inputs [(b f), c, h, w] are normalised as (b, c, f, h, w), i.e. statistics across all
    frames of a batch item. Instance hooks only; nothing global is patched.
    """
    handles = []

    def pre(mod, args):
        x = args[0]
        bf, c, h, w = x.shape
        return (x.reshape(bf // frames, frames, c, h, w).transpose(1, 2),)

    def post(mod, args, out):
        b, c, f, h, w = out.shape
        return out.transpose(1, 2).reshape(b * f, c, h, w)

    for m in module.modules():
        if isinstance(m, nn.GroupNorm):
            handles.append(m.register_forward_pre_hook(pre))
            handles.append(m.register_forward_hook(post))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


class AnimatedUNet(nn.Module):
    """``forward(latents, timestep, encoder_hidden_states, ...)`` over video latents.

    ``latents`` is (B, C, F, H, W) or (B*F, C, H, W) with ``num_frames`` (frames contiguous
    per batch item); the output has the input's layout. ``encoder_hidden_states`` is
    (B, L, D) (repeated per frame) or (B*F, L, D); ``timestep`` a scalar, (B,) or (B*F,).
    ControlNet residuals are in the per-frame layout (B*F, C, h, w), as ControlNetModel
    returns them for frame batches.
    """

    def __init__(self, unet: nn.Module, motion: MotionModuleSet | None, unet_groupnorm_across_frames: bool | None = None):
        super().__init__()
        self.unet = unet
        self.motion = motion
        self.interrupt_hook = None  # called between blocks (ComfyUI's interrupt check) while sampling
        self._unet_gn_across = unet_groupnorm_across_frames
        if motion is not None:
            self._check_layout()

    @property
    def config(self):
        return self.unet.config

    @property
    def dtype(self):
        return self.unet.dtype

    @property
    def unet_groupnorm_across_frames(self) -> bool:
        if self._unet_gn_across is not None:
            return self._unet_gn_across
        return bool(self.motion is not None and self.motion.groupnorm_across_frames)

    def _check_layout(self) -> None:
        unet, motion = self.unet, self.motion
        problems = []
        if len(motion.down_blocks) != len(unet.down_blocks) or len(motion.up_blocks) != len(unet.up_blocks):
            problems.append(f"{len(motion.down_blocks)}/{len(motion.up_blocks)} motion down/up blocks vs "
                            f"{len(unet.down_blocks)}/{len(unet.up_blocks)} UNet blocks")
        else:
            for kind, mblocks, ublocks in (("down", motion.down_blocks, unet.down_blocks), ("up", motion.up_blocks, unet.up_blocks)):
                for i, (mb, ub) in enumerate(zip(mblocks, ublocks)):
                    if len(mb.motion_modules) != len(ub.resnets):
                        problems.append(f"{kind} block {i}: {len(mb.motion_modules)} motion modules vs {len(ub.resnets)} resnets")
                    chans = ub.resnets[0].conv2.out_channels
                    mchans = mb.motion_modules[0].temporal_transformer.proj_in.in_features
                    if chans != mchans:
                        problems.append(f"{kind} block {i}: motion module has {mchans} channels, UNet {chans}")
        if problems:
            from .weights_io import AnimateDiffWeightsError

            raise AnimateDiffWeightsError("motion module does not fit this UNet (is it an SD1.5 motion module?): "
                                          + "; ".join(problems))

    @property
    def max_frames(self) -> int | None:
        return None if self.motion is None else self.motion.max_frames

    def _check(self) -> None:
        if self.interrupt_hook is not None:
            self.interrupt_hook()

    def _mm(self, block, j: int, h: torch.Tensor, frames: int) -> torch.Tensor:
        if block is None:
            return h
        return block.motion_modules[j](h, frames)

    def forward(self, latents, timestep, encoder_hidden_states, down_block_additional_residuals=None,
                mid_block_additional_residual=None, num_frames: int | None = None):
        five_d = latents.ndim == 5
        if five_d:
            b, c, f, hh, ww = latents.shape
            sample = latents.permute(0, 2, 1, 3, 4).reshape(b * f, c, hh, ww)
        else:
            if num_frames is None:
                raise ValueError("num_frames is required when latents are (B*F, C, H, W)")
            f = num_frames
            sample = latents
            if sample.shape[0] % f:
                raise ValueError(f"batch {sample.shape[0]} is not a multiple of num_frames={f}")
            b = sample.shape[0] // f
        bf = sample.shape[0]
        ehs = encoder_hidden_states
        if ehs.shape[0] == b and bf != b:
            ehs = ehs.repeat_interleave(f, dim=0)
        elif ehs.shape[0] != bf:
            raise ValueError(f"encoder_hidden_states batch {ehs.shape[0]} fits neither B={b} nor B*F={bf}")
        t = torch.as_tensor(timestep, device=sample.device)
        if t.ndim == 0:
            t = t.reshape(1).expand(bf)
        elif t.shape[0] == b and bf != b:
            t = t.repeat_interleave(f)
        elif t.shape[0] != bf:
            raise ValueError(f"timestep has {t.shape[0]} values; expected 1, B={b} or B*F={bf}")

        ctx = groupnorm_across_frames(self.unet, f) if self.unet_groupnorm_across_frames else contextlib.nullcontext()
        with ctx:
            out = self._forward_frames(sample, t, ehs, f, down_block_additional_residuals, mid_block_additional_residual)
        if five_d:
            out = out.reshape(b, f, *out.shape[1:]).permute(0, 2, 1, 3, 4)
        return out

    def _forward_frames(self, sample, t, ehs, f, down_res_add, mid_res_add):
        unet, motion = self.unet, self.motion
        emb = unet.time_embedding(unet.get_time_embed(sample=sample, timestep=t))
        n_up = len(unet.up_blocks) - 1
        forward_upsample_size = any(s % (2 ** n_up) for s in sample.shape[-2:])

        h = unet.conv_in(sample)
        res_samples = [h]
        for i, block in enumerate(unet.down_blocks):
            self._check()
            mblock = None if motion is None else motion.down_blocks[i]
            attns = getattr(block, "attentions", None) if getattr(block, "has_cross_attention", False) else None
            for j, resnet in enumerate(block.resnets):
                h = resnet(h, emb)
                if attns is not None:
                    h = attns[j](h, encoder_hidden_states=ehs, return_dict=False)[0]
                h = self._mm(mblock, j, h, f)
                res_samples.append(h)
            if block.downsamplers is not None:
                for down in block.downsamplers:
                    h = down(h)
                res_samples.append(h)

        if down_res_add is not None:
            if len(down_res_add) != len(res_samples):
                raise ValueError(f"got {len(down_res_add)} ControlNet down residuals, the UNet has {len(res_samples)}")
            res_samples = [r + a.to(r.dtype) for r, a in zip(res_samples, down_res_add)]

        self._check()
        mid = unet.mid_block
        h = mid.resnets[0](h, emb)
        for j, (attn, resnet) in enumerate(zip(mid.attentions, mid.resnets[1:])):
            h = attn(h, encoder_hidden_states=ehs, return_dict=False)[0]
            if motion is not None and motion.mid_block is not None:
                h = self._mm(motion.mid_block, j, h, f)
            h = resnet(h, emb)
        if mid_res_add is not None:
            h = h + mid_res_add.to(h.dtype)

        for i, block in enumerate(unet.up_blocks):
            self._check()
            mblock = None if motion is None else motion.up_blocks[i]
            n = len(block.resnets)
            skips, res_samples = res_samples[-n:], res_samples[:-n]
            attns = getattr(block, "attentions", None) if getattr(block, "has_cross_attention", False) else None
            for j, resnet in enumerate(block.resnets):
                h = torch.cat([h, skips[-1 - j]], dim=1)
                h = resnet(h, emb)
                if attns is not None:
                    h = attns[j](h, encoder_hidden_states=ehs, return_dict=False)[0]
                h = self._mm(mblock, j, h, f)
            if block.upsamplers is not None:
                size = res_samples[-1].shape[2:] if (forward_upsample_size and res_samples) else None
                for up in block.upsamplers:
                    h = up(h, size)

        if unet.conv_norm_out is not None:
            h = unet.conv_act(unet.conv_norm_out(h))
        return unet.conv_out(h)


def build_animated_unet(unet: nn.Module, motion: MotionModuleSet | None) -> AnimatedUNet:
    """Wrap a diffusers SD1.5 UNet with a motion-module set (``None``: plain per-frame UNet)."""
    if motion is not None:
        p = next(unet.parameters())
        motion.to(device=p.device, dtype=p.dtype)
    return AnimatedUNet(unet, motion)
