"""The One-to-All Animation transformer: diffusers' Wan2.1 T2V DiT plus the One-to-All parts.

Why a subclass and not a fork: the base (patch embedding, time/text embedding, RoPE, the blocks'
cross-attention and FFN, the output head) is diffusers' ``WanTransformer3DModel`` untouched; this
class adds what the official ``transformer_wan_refextractor_2d_controlnet_last_prefix.py`` adds,
with the released checkpoints' parameter names, so ``load_state_dict(strict=True)`` takes the
official shards as they are:

- ``blocks.N.attn1.add_k_proj / add_v_proj / norm_added_k``: each main block's self-attention
  also attends to a reference feature map (see ``refextractor.py``); main block ``i`` uses
  reference sample ``i // ceil(num_blocks / num_samples)``;
- ``refextractor.*``: the reference extractor, run on the 32-channel reference+mask latent;
- ``image_to_cond.*``: turns the same latent into a 16-channel frame put in front of the video
  latents (the "prefix", frame 0 for RoPE and token positions; dropped from the output);
- ``input_hint_block.*``, ``controlnet.blocks.N``, ``controlnet_zero.N``: the pose branch. The pose
  video and the reference-pose image are encoded separately (the image becomes frame 0); after main
  block 1, controlnet block 0 runs on (main block 0 output + pose tokens), block j >= 1 on block
  j-1's output; ``controlnet_zero[j](out_j) * conditioning_scale`` is added right after main block
  j+1.
- token replace: tokens of sequence frames 1 and 2 (the two re-encoded overlap latents of a later
  chunk) get the timestep-0 modulation in every main and controlnet block and in the output head.

Runtime: the main blocks stay in ``self.blocks`` (block swap streams them); every self-attention
uses ``models.wan.attention.attention`` with the backend that ``install_attention`` recorded on
the model; the cross-attention layers take the pack's stock processor like any Wan model.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from diffusers import WanTransformer3DModel
from diffusers.configuration_utils import register_to_config
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from diffusers.models.transformers.transformer_wan import WanTransformerBlock

from .conv_encoders import ImageCondEncoder2D, PoseHintEncoder
from .refextractor import (OneToAllRefExtractor, OneToAllSelfAttnProcessor, TextFreeBlock, block_modulation,
                           rope_factors, run_block, time_embedding)

TOKEN_REPLACE_FRAMES = 2  # 5 overlap pixel frames -> 2 latent frames, right after the prefix


class OneToAllBlock(WanTransformerBlock):
    """diffusers' Wan block with the reference key/value projections in its self-attention and a
    forward that takes modulation spans and the reference features."""

    def __init__(self, dim: int, ffn_dim: int, num_heads: int, qk_norm: str = "rms_norm_across_heads",
                 cross_attn_norm: bool = True, eps: float = 1e-6):
        super().__init__(dim, ffn_dim, num_heads, qk_norm, cross_attn_norm, eps, added_kv_proj_dim=None)
        attn = self.attn1
        attn.added_kv_proj_dim = dim
        attn.add_k_proj = nn.Linear(dim, attn.inner_dim, bias=True)
        attn.add_v_proj = nn.Linear(dim, attn.inner_dim, bias=True)
        attn.norm_added_k = nn.RMSNorm(attn.inner_dim, eps=eps)
        attn.set_processor(OneToAllSelfAttnProcessor("full"))

    def forward(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor, spans,
                rotary_emb: torch.Tensor, ref: torch.Tensor | None = None,
                ref_rotary_emb: torch.Tensor | None = None, backend=None) -> torch.Tensor:
        mods = block_modulation(self.scale_shift_table, spans)
        attn_kwargs = dict(rotary_emb=rotary_emb, ref=ref, ref_rotary_emb=ref_rotary_emb, backend=backend)
        return run_block(self, hidden_states, mods, attn_kwargs, context=encoder_hidden_states)


class OneToAllTransformer(WanTransformer3DModel):
    """Wan2.1 T2V + reference extractor + pose ControlNet + prefix frame (module docstring).

    The first arguments are ``WanTransformer3DModel``'s (the official "main" config); the
    ``controlnet_*`` and ``refextractor_*`` ones come from the official controlnet / refextractor
    configs (None = same as the main model)."""

    supports_sequence_parallel = True  # forward splits its tokens itself (models/wan/sequence_parallel.py)

    _no_split_modules = ["OneToAllBlock", "TextFreeBlock"]
    _repeated_blocks = ["OneToAllBlock"]
    poseanimate_step_cache_native = True  # forward consults models.runtime.step_cache itself

    @register_to_config
    def __init__(
        self,
        patch_size: tuple[int, ...] = (1, 2, 2),
        num_attention_heads: int = 40,
        attention_head_dim: int = 128,
        in_channels: int = 16,
        out_channels: int = 16,
        text_dim: int = 4096,
        freq_dim: int = 256,
        ffn_dim: int = 13824,
        num_layers: int = 40,
        cross_attn_norm: bool = True,
        qk_norm: str | None = "rms_norm_across_heads",
        eps: float = 1e-6,
        image_dim: int | None = None,
        added_kv_proj_dim: int | None = None,
        rope_max_seq_len: int = 1024,
        pos_embed_seq_len: int | None = None,
        controlnet_layers: int = 1,
        controlnet_heads: int | None = None,
        controlnet_ffn_dim: int | None = None,
        refextractor_layers: int = 7,
        refextractor_heads: int | None = None,
        refextractor_ffn_dim: int | None = None,
        refextractor_freq_dim: int | None = None,
        refextractor_in_channels: int = 32,
        ref_repeat: bool = False,
    ) -> None:
        if image_dim is not None or added_kv_proj_dim is not None or pos_embed_seq_len is not None:
            raise ValueError("One-to-All is built on Wan2.1 T2V: image_dim / added_kv_proj_dim / "
                             "pos_embed_seq_len must be None")
        if ref_repeat:
            raise ValueError("ref_repeat=True (reference repeated over time) is not used by any released "
                             "One-to-All model and is not supported")
        super().__init__(patch_size=patch_size, num_attention_heads=num_attention_heads,
                         attention_head_dim=attention_head_dim, in_channels=in_channels,
                         out_channels=out_channels, text_dim=text_dim, freq_dim=freq_dim, ffn_dim=ffn_dim,
                         num_layers=0, cross_attn_norm=cross_attn_norm, qk_norm=qk_norm, eps=eps,
                         rope_max_seq_len=rope_max_seq_len)
        self.register_to_config(num_layers=num_layers)  # the base class recorded 0 (blocks built here)
        dim = num_attention_heads * attention_head_dim
        self.inner_dim = dim
        self.blocks = nn.ModuleList(
            OneToAllBlock(dim, ffn_dim, num_attention_heads, qk_norm, cross_attn_norm, eps) for _ in range(num_layers))

        # pose branch
        self.input_hint_block = PoseHintEncoder(out_channels=dim)
        self.controlnet = nn.Module()
        self.controlnet.blocks = nn.ModuleList(
            TextFreeBlock(dim, controlnet_ffn_dim or ffn_dim, controlnet_heads or num_attention_heads, eps, rope="full")
            for _ in range(controlnet_layers))
        self.controlnet_zero = nn.ModuleList(nn.Linear(dim, dim) for _ in range(controlnet_layers))

        # reference
        self.refextractor = OneToAllRefExtractor(
            dim, refextractor_heads or num_attention_heads, refextractor_ffn_dim or ffn_dim, refextractor_layers,
            in_channels=refextractor_in_channels, freq_dim=refextractor_freq_dim or freq_dim,
            patch_size=patch_size, eps=eps, rope_max_seq_len=rope_max_seq_len)
        self.image_to_cond = ImageCondEncoder2D(in_channels=refextractor_in_channels, out_channels=in_channels)

    # ----------------------------------------------------------------------------- helpers
    @property
    def num_ref_samples(self) -> int:
        return len(self.refextractor.ref_blocks)

    def ref_sample_index(self, block_index: int) -> int:
        """Which reference feature main block ``block_index`` attends to (official rule)."""
        return block_index // math.ceil(len(self.blocks) / self.num_ref_samples)

    def _pose_tokens(self, controlnet_cond: torch.Tensor, image_pose: torch.Tensor | None,
                     tokens: torch.Tensor) -> torch.Tensor:
        if image_pose is None:
            raise ValueError("image_pose (the reference pose image [B, 3, 1, H, W] in [-1, 1]) is required "
                             "with controlnet_cond")
        video = self.input_hint_block(controlnet_cond)
        prefix = self.input_hint_block(image_pose)
        hint = torch.cat([prefix, video], dim=2).flatten(2).transpose(1, 2)
        if hint.shape != tokens.shape:
            raise ValueError(
                f"pose tokens {tuple(hint.shape)} do not match the video tokens {tuple(tokens.shape)}: the pose "
                f"video {tuple(controlnet_cond.shape)} must have 4*(latent frames-1)+1 frames and 8x the latent "
                f"height/width, image_pose one frame of the same size")
        return hint.to(tokens.dtype)

    # ----------------------------------------------------------------------------- forward
    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        image_latents: torch.Tensor | None = None,
        controlnet_cond: torch.Tensor | None = None,
        image_pose: torch.Tensor | None = None,
        conditioning_scale: float = 1.0,
        token_replace: bool = False,
        return_dict: bool = True,
        encoder_hidden_states_image: torch.Tensor | None = None,
        attention_kwargs: dict | None = None,
    ):
        """One denoising call, as the official pipeline makes it.

        hidden_states [B, 16, F, h, w] (noisy latents, no prefix); timestep [B]; text
        [B, L, text_dim]; image_latents [B, 32, 1, h, w] (reference + mask latents);
        controlnet_cond [B, 3, 4(F-1)+1, 8h, 8w] pose video and image_pose [B, 3, 1, 8h, 8w]
        reference pose, both in [-1, 1] (None = no pose branch); returns the flow for
        hidden_states (same shape). ``conditioning_scale == 0`` skips the pose branch (its
        contribution would be exactly zero)."""
        if encoder_hidden_states_image is not None:
            raise ValueError("One-to-All takes no CLIP image embeddings (encoder_hidden_states_image)")
        if attention_kwargs:
            raise ValueError("attention_kwargs (LoRA scale) are not supported by the One-to-All transformer")
        if image_latents is None:
            raise ValueError("image_latents (reference + mask latents [B, 32, 1, h, w]) are required")
        if hidden_states.ndim != 5 or image_latents.ndim != 5 or image_latents.shape[2] != 1 \
                or image_latents.shape[3:] != hidden_states.shape[3:]:
            raise ValueError(f"image_latents must be one frame of the video latents' size: got "
                             f"{tuple(image_latents.shape)} for hidden_states {tuple(hidden_states.shape)}")
        dtype = self.patch_embedding.weight.dtype
        backend = getattr(self, "poseanimate_attention", None)
        cache = getattr(self, "poseanimate_step_cache", None)
        cache_tag = (tuple(hidden_states.shape), id(encoder_hidden_states), id(image_latents),
                     float(conditioning_scale), bool(token_replace), controlnet_cond is not None)
        timestep = timestep.reshape(-1)
        encoder_hidden_states = encoder_hidden_states.to(dtype)

        prefix = self.image_to_cond(image_latents).to(dtype)
        latents = torch.cat([prefix, hidden_states.to(dtype)], dim=2)
        batch, _, frames, height, width = latents.shape
        p_t, p_h, p_w = self.config.patch_size
        ppf, pph, ppw = frames // p_t, height // p_h, width // p_w

        ref_samples, ref_freqs = self.refextractor(image_latents, timestep, backend)
        freqs = rope_factors(self.rope, latents)
        tokens = self.patch_embedding(latents).flatten(2).transpose(1, 2).contiguous()
        seq = tokens.shape[1]

        use_pose = controlnet_cond is not None and len(self.controlnet.blocks) > 0 and conditioning_scale != 0
        pose_tokens = self._pose_tokens(controlnet_cond, image_pose, tokens) if use_pose else None

        if token_replace:
            temb, proj = time_embedding(self.condition_embedder, torch.cat([timestep, torch.zeros_like(timestep)]),
                                        encoder_hidden_states)
            (temb, temb0), (proj, proj0) = temb.chunk(2), proj.chunk(2)
            start, end = pph * ppw, min(seq, (1 + TOKEN_REPLACE_FRAMES) * pph * ppw)
            spans = [(0, start, proj), (start, end, proj0), (end, seq, proj)]
            head_spans = [(0, start, temb), (start, end, temb0), (end, seq, temb)]
            spans = [s for s in spans if s[0] < s[1]]
            head_spans = [s for s in head_spans if s[0] < s[1]]
        else:
            temb, proj = time_embedding(self.condition_embedder, timestep, encoder_hidden_states)
            spans, head_spans = [(0, seq, proj)], [(0, seq, temb)]
        context = self.condition_embedder.text_embedder(encoder_hidden_states)

        sp = getattr(self, "poseanimate_sequence_parallel", None)
        if sp is not None:  # this rank's part of the video tokens (models/wan/sequence_parallel.py)
            tokens, freqs, spans = sp.shard(tokens), sp.shard(freqs), sp.shard_spans(spans, seq)
            pose_tokens = sp.shard(pose_tokens) if pose_tokens is not None else None
            backend = sp.backend(backend)
            cache = None  # ranks would decide to skip differently and desynchronise their collectives

        x = tokens
        first_out = control = cached = None
        for i, block in enumerate(self.blocks):
            ref = ref_samples[self.ref_sample_index(i)]
            x = block(x, context, spans, freqs, ref, ref_freqs, backend)
            j = i - 1
            if use_pose and 0 <= j < len(self.controlnet.blocks):
                ctrl_in = first_out + pose_tokens if j == 0 else control
                control = self.controlnet.blocks[j](ctrl_in, spans, freqs, backend)
                x = x + self.controlnet_zero[j](control) * conditioning_scale
            if i == 0:
                first_out = x
                if cache is not None:  # step cache: the later blocks (and the ControlNet) may be skipped
                    cached = cache.after_first_block(cache_tag, timestep, tokens, x)
                    if cached is not None:
                        x = cached
                        break
        if cache is not None and cached is None:
            cache.after_last_block(x)
        if sp is not None:
            x = sp.gather(x)

        # output head: shift/scale from temb (per span), then unpatchify and drop the prefix frame
        normed = self.norm_out(x.float())
        for start, end, t in head_spans:
            shift, scale = (self.scale_shift_table + t.unsqueeze(1)).chunk(2, dim=1)
            normed[:, start:end].mul_(1 + scale).add_(shift)
        out = self.proj_out(normed.type_as(x))
        out = out.reshape(batch, ppf, pph, ppw, p_t, p_h, p_w, -1).permute(0, 7, 1, 4, 2, 5, 3, 6)
        out = out.flatten(6, 7).flatten(4, 5).flatten(2, 3)[:, :, 1:]
        if not return_dict:
            return (out,)
        return Transformer2DModelOutput(sample=out)
