"""Build a model without memory, then fill it from a state dict after checking every key.

Why one module: every family builds its modules with parameters on the meta device (no memory,
no random init) and loads with ``load_state_dict(..., assign=True)``, so a 14B checkpoint is held
once, never twice; and every family must name the missing / unexpected / mis-shaped keys when a
file does not fit, instead of letting torch raise a bare error.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable

from torch import nn

from .weights import WeightsError


@contextlib.contextmanager
def empty_parameters():
    """Build modules with parameters on the meta device (no memory, no init cost) while buffers
    computed in ``__init__`` (RoPE tables, position ids) stay real."""
    original = nn.Module.register_parameter

    def register(module, name, param):
        original(module, name, param)
        if param is not None and not param.is_meta:
            module._parameters[name] = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)

    nn.Module.register_parameter = register
    try:
        yield
    finally:
        nn.Module.register_parameter = original


def key_problems(model: nn.Module, sd: dict, optional: Iterable[str] = (),
                 buffer_required: Callable[[str], bool] = lambda name: True) -> list[str]:
    """What keeps ``sd`` from loading into ``model``: missing parameters (and the buffers
    ``buffer_required`` names), unexpected keys, wrong shapes; empty when it fits."""
    optional = set(optional)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    buffers = {k for k, _ in model.named_buffers()}
    missing = [k for k in expected if k not in sd and k not in optional and (k not in buffers or buffer_required(k))]
    unexpected = [k for k in sd if k not in expected]
    wrong = [f"{k}: file {tuple(sd[k].shape)} vs model {tuple(expected[k])}"
             for k in sd if k in expected and tuple(sd[k].shape) != tuple(expected[k])]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys, first: {missing[:5]}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys, first: {unexpected[:5]}")
    if wrong:
        parts.append(f"{len(wrong)} wrong shapes, first: {wrong[:3]}")
    return parts


def load_checked(model: nn.Module, sd: dict, what: str, hint: str | Callable[[], str] = "",
                 optional: Iterable[str] = (), buffer_required: Callable[[str], bool] = lambda name: True,
                 error: type[Exception] = WeightsError) -> None:
    """Load ``sd`` into ``model`` with ``assign=True`` after :func:`key_problems`; a mismatch
    raises ``error`` with ``what`` (which weights), the problems and ``hint`` (what to pick)."""
    parts = key_problems(model, sd, optional, buffer_required)
    if parts:
        advice = hint() if callable(hint) else hint
        raise error("; ".join([f"{what} do not match the model", *parts] + ([advice] if advice else [])))
    result = model.load_state_dict(sd, strict=False, assign=True)
    buffers = {k for k, _ in model.named_buffers()}
    optional = set(optional)
    leftover = [k for k in result.missing_keys if k not in optional and (k not in buffers or buffer_required(k))]
    if leftover or result.unexpected_keys:  # pragma: no cover - guarded by the checks above
        raise error(f"{what}: load left {leftover[:5]} / {result.unexpected_keys[:5]}")
