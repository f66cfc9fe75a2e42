"""ddim_step: one DDIM step (Song et al. 2021, eq. 12) as a single Triton kernel.

    x0    = (x_t - sqrt(1 - a_t) * eps) / sqrt(a_t),  clamped to [-1, 1] if clip
    eps'  = (x_t - sqrt(a_t) * x0) / sqrt(1 - a_t)    (re-derived after the clamp, if clip)
    sigma = eta * sqrt((1 - a_prev) / (1 - a_t)) * sqrt(1 - a_t / a_prev)
    x     = sqrt(a_prev) * x0 + sqrt(1 - a_prev - sigma^2) * eps' + sigma * noise

Same semantics as `pdiff_fast.ops.ddim_step.ddim_step_torch`: a_t and a_prev are Python
floats shared by the whole batch, so the scalar coefficients are computed on the host in
float64 and the kernel is a flat elementwise pass. With eta > 0 the noise is either given or
drawn inside the kernel with Philox (`tl.randn`), which removes the separate randn launch.

Floor (bytes moved per call, fp32, N = numel):
    sigma > 0, noise given:      read x_t, eps, noise + write x_prev, pred_x0 = 5 * 4 * N bytes
    sigma == 0 or noise drawn:   read x_t, eps        + write x_prev, pred_x0 = 4 * 4 * N bytes
Non-contiguous inputs cost one extra copy each. No backward (sampling runs under no_grad).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

_BLOCK = 2048  # elements per program


@triton.jit
def _ddim_step_kernel(
    x_ptr,  # (N,) x_t
    eps_ptr,  # (N,) predicted noise
    noise_ptr,  # (N,) standard normal; unused unless NOISE == 1
    x_prev_ptr,  # (N,) output x_{t_prev}
    x0_ptr,  # (N,) output pred_x0
    seed_ptr,  # (1,) int64 device seed; unused unless SEED_FROM_PTR
    seed,  # int: the Philox seed, or the offset added to *seed_ptr
    N,  # number of elements
    sqrt_a,  # sqrt(a_t)
    sqrt_1ma,  # sqrt(1 - a_t)
    sqrt_a_prev,  # sqrt(a_prev)
    direction,  # sqrt(max(1 - a_prev - sigma^2, 0))
    sigma,  # noise scale
    CLIP: tl.constexpr,  # clamp pred_x0 and re-derive eps
    NOISE: tl.constexpr,  # 0: none, 1: read noise_ptr, 2: draw with tl.randn
    SEED_FROM_PTR: tl.constexpr,  # effective seed = *seed_ptr + seed
    BLOCK: tl.constexpr,  # elements per program
):
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)  # (BLOCK,)
    mask = offs < N
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    eps = tl.load(eps_ptr + offs, mask=mask, other=0.0).to(tl.float32)

    # 1. x0 prediction; with clipping, the eps consistent with the clipped x0
    x0 = (x - sqrt_1ma * eps) / sqrt_a
    if CLIP:
        x0 = tl.minimum(tl.maximum(x0, -1.0), 1.0)
        eps = (x - sqrt_a * x0) / sqrt_1ma

    # 2. eq. 12: predicted x0, direction pointing to x_t, random noise
    x_prev = sqrt_a_prev * x0 + direction * eps
    if NOISE == 1:
        x_prev += sigma * tl.load(noise_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    elif NOISE == 2:
        if SEED_FROM_PTR:
            s = tl.load(seed_ptr) + seed
        else:
            s = seed
        x_prev += sigma * tl.randn(s, offs)

    tl.store(x_prev_ptr + offs, x_prev, mask=mask)
    tl.store(x0_ptr + offs, x0, mask=mask)


def _draw_seed() -> int:
    """A Philox seed from torch's default CPU generator (follows torch.manual_seed)."""
    return int(torch.randint(0, 2**31 - 1, (1,)).item())


def ddim_step(
    x_t: torch.Tensor,  # (B, ...)
    eps: torch.Tensor,  # (B, ...)
    a_t: float,  # alphas_cumprod[t]
    a_prev: float,  # alphas_cumprod[t_prev], or 1.0 for the last step
    noise: torch.Tensor | None,  # (B, ...) standard normal, or None (drawn in-kernel if needed)
    eta: float = 0.0,
    clip: bool = True,
    *,
    seed: int | torch.Tensor | None = None,
    seed_offset: int = 0,
    out: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One DDIM step; returns (x_prev, pred_x0), both shaped like x_t.

    seed / seed_offset: as in `ddpm_step`; only used when sigma > 0 and noise is None.
    out: optional contiguous (x_prev, pred_x0) buffers shaped like x_t (x_prev may be x_t).
    """
    if eps.shape != x_t.shape or (noise is not None and noise.shape != x_t.shape):
        raise ValueError("ddim_step: x_t, eps and noise must have the same shape")
    a_t, a_prev, eta = float(a_t), float(a_prev), float(eta)
    sigma = eta * ((1.0 - a_prev) / (1.0 - a_t)) ** 0.5 * max(1.0 - a_t / a_prev, 0.0) ** 0.5
    direction = max(1.0 - a_prev - sigma**2, 0.0) ** 0.5
    if out is None:
        out = (torch.empty_like(x_t, memory_format=torch.contiguous_format),
               torch.empty_like(x_t, memory_format=torch.contiguous_format))
    x_prev, x0 = out
    for buf in out:
        if buf.shape != x_t.shape or not buf.is_contiguous() or buf.device != x_t.device:
            raise ValueError("ddim_step: out buffers must be contiguous, on x_t's device, shaped like x_t")
    N = x_t.numel()
    if N == 0:
        return x_prev, x0

    x_c = x_t.contiguous()
    seed_ptr, seed_from_ptr, seed_val = x_c, False, 0  # x_c: placeholder pointers when unused
    if sigma <= 0.0:
        noise_c, mode = x_c, 0
    elif noise is not None:
        noise_c, mode = noise.contiguous(), 1
    else:
        noise_c, mode = x_c, 2
        if isinstance(seed, torch.Tensor):
            seed_ptr, seed_from_ptr, seed_val = seed.to(x_t.device, torch.int64), True, int(seed_offset)
        else:
            seed_val = (_draw_seed() if seed is None else int(seed)) + int(seed_offset)

    grid = (triton.cdiv(N, _BLOCK),)
    _ddim_step_kernel[grid](
        x_c, eps.contiguous(), noise_c, x_prev, x0, seed_ptr, seed_val, N,
        a_t**0.5, (1.0 - a_t) ** 0.5, a_prev**0.5, direction, sigma,
        CLIP=bool(clip), NOISE=mode, SEED_FROM_PTR=seed_from_ptr, BLOCK=_BLOCK, num_warps=4,
    )
    return x_prev, x0
