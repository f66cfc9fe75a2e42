"""Prompts: the validation accuracies asked for, checked, spread over the models, and normalised
for the encoder (pdiff_fast.prompted.encoder)."""
from __future__ import annotations

import math

import torch

SWEEP_INSIDE = 6  # the default prompts: this many evenly over the population's range ...
SWEEP_ABOVE = (1.0, 2.0)  # ... and these many points above its best (extrapolation)


def default_prompts(lo: float, hi: float) -> list[float]:
    """The calibration sweep: SWEEP_INSIDE prompts from lo to hi, then hi + each of SWEEP_ABOVE (capped at 100)."""
    inside = [lo + (hi - lo) * i / (SWEEP_INSIDE - 1) for i in range(SWEEP_INSIDE)]
    above = [min(100.0, hi + d) for d in SWEEP_ABOVE]
    return sorted(set(round(p, 4) for p in inside + above))


def check_prompts(prompts, lo: float, hi: float, extrapolate: bool) -> list[float]:
    """The prompts as floats; NaN, infinite, outside [0, 100], or outside the population's validation
    range [lo, hi] without `extrapolate` is a ValueError naming the prompt and the range."""
    out = []
    for p in prompts:
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not math.isfinite(p):
            raise ValueError(f"prompt accuracy {p!r} is not a finite number (a validation accuracy in %)")
        if not 0 <= p <= 100:
            raise ValueError(f"prompt accuracy {p} is outside [0, 100] (a validation accuracy in %)")
        if not extrapolate and not lo <= p <= hi:
            raise ValueError(f"prompt accuracy {p} is outside the population's validation accuracies "
                             f"[{lo:.2f}, {hi:.2f}]; pass --extrapolate (prompt_extrapolate) to ask anyway")
        out.append(float(p))
    if not out:
        raise ValueError("no prompt accuracy given")
    return out


def spread(prompts: list[float], n: int) -> torch.Tensor:
    """(n,) float32: model i gets prompts[i * P // n], so each prompt gets a contiguous block of n / P models."""
    if n < len(prompts):
        raise ValueError(f"{n} models cannot cover {len(prompts)} prompts (one model per prompt at least)")
    return torch.tensor([prompts[i * len(prompts) // n] for i in range(n)], dtype=torch.float32)


def normalise(acc: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """(n,) accuracies in % -> (n, 1): 0 at lo, 1 at hi."""
    if not hi > lo:
        raise ValueError(f"the population's validation accuracies do not spread (all {lo}); prompting needs a range")
    return ((acc.float() - lo) / (hi - lo)).unsqueeze(1)
