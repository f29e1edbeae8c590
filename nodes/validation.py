"""One check of every FLOAT input of every pack node: finite, and inside the declared range.

ComfyUI's own range check compares ``value < min`` and ``value > max``; both are false for
NaN, so a NaN guidance scale used to pass and render an all-black video with a success
exit. ``install`` gives each pack node class with FLOAT inputs:

* ``VALIDATE_INPUTS`` naming exactly its FLOAT inputs, so a bad widget value is refused when
  the prompt is queued (HTTP 400, the input marked red in the frontend). ComfyUI skips its
  own min/max check for inputs a ``VALIDATE_INPUTS`` names, so the range is checked here too.
* a check at run time of the same inputs, for values that arrive through links (another
  node's FLOAT output) or from callers that bypass validation (the in-process executor).

Done once, at pack import (``__init__.py``), so a new node is covered without code of its own.
"""
from __future__ import annotations

import functools
import inspect
import math


class InputValueError(ValueError):
    """A node input value that cannot be used; the message names the input and the fix."""


def float_inputs(cls) -> dict[str, dict]:
    """FLOAT inputs of a node class -> their options (min, max, ...)."""
    spec = cls.INPUT_TYPES()
    found = {}
    for section in ("required", "optional"):
        for name, entry in (spec.get(section) or {}).items():
            if isinstance(entry, (tuple, list)) and entry and entry[0] == "FLOAT":
                found[name] = dict(entry[1]) if len(entry) > 1 and isinstance(entry[1], dict) else {}
    return found


def _range_text(opts: dict) -> str:
    lo, hi = opts.get("min"), opts.get("max")
    if lo is not None and hi is not None:
        return f" from {lo} to {hi}"
    if lo is not None:
        return f" of at least {lo}"
    if hi is not None:
        return f" of at most {hi}"
    return ""


def float_problem(name: str, value, opts: dict, check_range: bool = True) -> str | None:
    """Why ``value`` cannot be the FLOAT input ``name`` (None when it is fine)."""
    fix = f"set {name} to a number{_range_text(opts)}"
    if isinstance(value, bool):
        return f"{name} is {value!r}, not a number; {fix}."
    try:
        number = float(value)
    except (TypeError, ValueError):
        return f"{name} is {value!r}, not a number; {fix}."
    if not math.isfinite(number):
        return (f"{name} is {value!r}, not a finite number (NaN or infinity would turn the output black or "
                f"meaningless); {fix}.")
    if check_range and opts.get("min") is not None and number < opts["min"]:
        return f"{name} = {number} is below its minimum {opts['min']}; {fix}."
    if check_range and opts.get("max") is not None and number > opts["max"]:
        return f"{name} = {number} is above its maximum {opts['max']}; {fix}."
    return None


def _validator(floats: dict[str, dict]):
    """A VALIDATE_INPUTS whose declared arguments are exactly the FLOAT inputs.

    ComfyUI reads the argument names (``inspect.getfullargspec``) to decide which inputs it
    hands over and which of its own checks to skip; the signature is set to say so.
    """
    def validate(cls, **values):
        problems = [float_problem(name, value, floats[name]) for name, value in values.items()
                    if name in floats and value is not None]
        problems = [p for p in problems if p]
        return " ".join(problems) if problems else True

    params = [inspect.Parameter("cls", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    params += [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None) for n in floats]
    validate.__signature__ = inspect.Signature(params)
    return classmethod(validate)


def _checked(method, floats: dict[str, dict]):
    """The node's FUNCTION, refusing non-finite FLOAT values that arrive at run time."""
    @functools.wraps(method)
    def run(self, *args, **kwargs):
        for name, opts in floats.items():
            if name in kwargs and kwargs[name] is not None:
                problem = float_problem(name, kwargs[name], opts, check_range=False)
                if problem:
                    raise InputValueError(f"{type(self).__name__}: {problem}")
        return method(self, *args, **kwargs)

    run._poseanimate_checked = True
    return run


def install(mappings: dict) -> None:
    """Add the FLOAT checks to every node class in ``mappings`` (idempotent)."""
    for cls in mappings.values():
        floats = float_inputs(cls)
        if not floats:
            continue
        if "VALIDATE_INPUTS" not in cls.__dict__:
            cls.VALIDATE_INPUTS = _validator(floats)
        method = getattr(cls, cls.FUNCTION)
        if not getattr(method, "_poseanimate_checked", False):
            setattr(cls, cls.FUNCTION, _checked(method, floats))
