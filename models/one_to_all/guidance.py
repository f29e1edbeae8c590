"""One-to-All's three-way guidance (reference, pose, text) and its 2-call and 1-call fallbacks.

Facts from the official pipeline (``pipeline_wanx_vhuman_tokenreplace.py``) with the released
scripts' flags (black image and black pose guidance on, controlnet scale 1, ``case1`` off).
``T(ref, pose, text, s)`` is one transformer call; ``ref_0`` is the "empty" reference (a black
image encoded by the VAE, concatenated with itself to 32 channels), ``pose_0`` the "empty"
pose (pose video and reference-pose image all -1), ``I``/``P`` the image/pose guidance scales:

* ``I > 1`` and ``P > 1`` (default, 3 calls per step):
  ``cond = T(ref, pose, pos, c)``, ``uncond = T(ref_0, pose_0, neg, 0)``,
  ``ref_uncond = T(ref_0, pose, pos, c)``;
  ``v = uncond + P * (ref_uncond - uncond) + I * (cond - ref_uncond)``.
  (``case1``: ``pose_uncond = T(ref, pose_0, pos, c)`` and
  ``v = uncond + I * (pose_uncond - uncond) + P * (cond - pose_uncond)``.)
* ``I > 1``, ``P <= 1`` (2 calls): ``uncond = T(ref_0, pose_0, neg, 0)``,
  ``v = uncond + I * (cond - uncond)``; with black-pose guidance off (only reachable with
  ``P <= 0``) the uncond call keeps the real pose: ``T(ref_0, pose, neg, c)``.
* ``I <= 1`` (1 call): ``v = cond``, whatever ``P`` is.

Calls run in the official order (cond, uncond, then ref/pose uncond); every call of a step
gets the same latents, timestep and token-replace flag.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from ..runtime.step_cache import call_key

# Negative prompt of the released inference scripts (the hosted endpoint uses Wan's default).
ONE_TO_ALL_NEGATIVE_PROMPT = (
    "black background, Aerial view, aerial view, overexposed, low quality, deformation, a poor composition, "
    "bad hands, bad teeth, bad eyes, bad limbs, distortion"
)


@dataclass(frozen=True)
class Call:
    """One transformer call of a step: which inputs are swapped for their empty / negative versions."""

    name: str
    empty_reference: bool
    empty_pose: bool
    negative_text: bool
    zero_control: bool  # controlnet scale 0 instead of the real one


COND = Call("cond", False, False, False, False)
UNCOND = Call("uncond", True, True, True, True)
UNCOND_KEEP_POSE = Call("uncond", True, False, True, False)
REF_UNCOND = Call("ref_uncond", True, False, False, False)
POSE_UNCOND = Call("pose_uncond", False, True, False, False)


@dataclass(frozen=True)
class GuidancePlan:
    """Calls of one step and how their outputs combine."""

    image_scale: float
    pose_scale: float
    calls: tuple[Call, ...]
    case1: bool = False

    @property
    def mode(self) -> str:
        return {1: "cond", 2: "image", 3: "image+pose"}[len(self.calls)]

    def combine(self, out: dict[str, torch.Tensor]) -> torch.Tensor:
        """The guided velocity from the call outputs (the official arithmetic order)."""
        i, p = self.image_scale, self.pose_scale
        if len(self.calls) == 1:
            return out["cond"]
        if len(self.calls) == 2:
            return out["uncond"] + i * (out["cond"] - out["uncond"])
        if self.case1:
            return out["uncond"] + i * (out["pose_uncond"] - out["uncond"]) + p * (out["cond"] - out["pose_uncond"])
        return out["uncond"] + p * (out["ref_uncond"] - out["uncond"]) + i * (out["cond"] - out["ref_uncond"])


def guidance_plan(image_scale: float, pose_scale: float, case1: bool = False, black_pose_cfg: bool = True) -> GuidancePlan:
    """Which calls run for these scales (see the module docstring)."""
    image_scale, pose_scale = float(image_scale), float(pose_scale)
    for name, value in (("image_guidance_scale", image_scale), ("pose_guidance_scale", pose_scale)):
        if not torch.isfinite(torch.tensor(value)) or value < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {value}.")
    black_pose_cfg = bool(black_pose_cfg) or pose_scale > 0  # the pipeline forces it on when P > 0
    if image_scale <= 1.0:
        calls = (COND,)
    elif pose_scale > 1.0:
        calls = (COND, UNCOND, POSE_UNCOND if case1 else REF_UNCOND)
    elif black_pose_cfg:
        calls = (COND, UNCOND)
    else:
        calls = (COND, UNCOND_KEEP_POSE)
    return GuidancePlan(image_scale, pose_scale, calls, bool(case1))


@dataclass
class Conditions:
    """Everything a chunk's calls need besides latents and timestep.

    ``reference``/``empty_reference``: ``[B, 32, 1, h, w]`` latents; ``pose_video``:
    ``[B, 3, F, H, W]`` in [-1, 1]; ``reference_pose``: ``[B, 3, 1, H, W]``;
    ``positive``/``negative``: text embeddings ``[B, L, dim]``; ``control_scale``: c.
    """

    reference: torch.Tensor
    empty_reference: torch.Tensor
    pose_video: torch.Tensor
    reference_pose: torch.Tensor
    positive: torch.Tensor
    negative: torch.Tensor
    control_scale: float = 1.0
    _empty_pose: tuple | None = field(default=None, repr=False)

    def empty_pose(self) -> torch.Tensor:
        """The empty pose video of the current ``pose_video`` (made once per chunk, then shared)."""
        if self._empty_pose is None or self._empty_pose[0] is not self.pose_video:
            self._empty_pose = (self.pose_video, empty_pose_video(self.pose_video))
        return self._empty_pose[1]

    def inputs_for(self, call: Call) -> dict:
        """Keyword inputs of the transformer for one call (shared tensors, nothing copied)."""
        pose = self.empty_pose() if call.empty_pose else self.pose_video
        return {
            "encoder_hidden_states": self.negative if call.negative_text else self.positive,
            "image_latents": self.empty_reference if call.empty_reference else self.reference,
            "controlnet_cond": pose,
            "image_pose": pose[:, :, :1] if call.empty_pose else self.reference_pose,
            "conditioning_scale": 0.0 if call.zero_control else float(self.control_scale),
        }


def empty_pose_video(pose_video: torch.Tensor) -> torch.Tensor:
    """The official 'empty' pose: black frames (-1 in [-1, 1]) of the same shape and dtype."""
    return torch.full_like(pose_video, -1.0)


def empty_reference_latents(encode: Callable[[torch.Tensor], torch.Tensor], height: int, width: int,
                            dtype: torch.dtype = torch.float32, device="cpu") -> torch.Tensor:
    """The official 'empty' reference: a black RGB image (all -1) encoded, concatenated with itself.

    ``encode`` maps ``[1, 3, 1, H, W]`` in [-1, 1] to normalised latents ``[1, 16, 1, h, w]``.
    """
    black = torch.full((1, 3, 1, int(height), int(width)), -1.0, dtype=dtype, device=device)
    z = encode(black)
    return torch.cat([z, z], dim=1)


def guided_velocity(model: Callable, plan: GuidancePlan, conditions: Conditions, latents: torch.Tensor,
                    timestep: torch.Tensor, token_replace: bool) -> torch.Tensor:
    """Run the plan's calls (official order) on the same latents and timestep and combine them.

    ``model`` is called with keywords, as the official pipeline calls its transformer:
    ``model(hidden_states=, timestep=, encoder_hidden_states=, image_latents=, controlnet_cond=,
    image_pose=, conditioning_scale=, token_replace=, return_dict=False)[0]``.
    Outputs are released as soon as the combination no longer needs them.
    """
    outputs: dict[str, torch.Tensor] = {}
    for call in plan.calls:
        kw = conditions.inputs_for(call)
        with call_key(call.name):  # each call type has its own step-cache entry
            outputs[call.name] = model(hidden_states=latents, timestep=timestep, **kw,
                                       token_replace=bool(token_replace), return_dict=False)[0]
    velocity = plan.combine(outputs)
    outputs.clear()
    return velocity
