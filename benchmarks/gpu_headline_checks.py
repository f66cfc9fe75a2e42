"""Spot checks of the headline run (benchmarks/gpu_headline.py): each fused op against its torch
reference on fresh random inputs, and the small workload compute-sanitizer's memcheck runs."""
from __future__ import annotations

import os
import time

from typing import TYPE_CHECKING

from benchmarks.gpu_headline_record import Killed, PhaseTimeout

if TYPE_CHECKING:
    from benchmarks.gpu_headline_phases import Ctx


def _rel(out, ref) -> tuple[float, float]:
    out, ref = out.double().cpu(), ref.double().cpu()
    if not bool(out.isfinite().all()):
        return float("nan"), float("nan")
    diff = (out - ref).abs()
    return float(diff.max()), float(diff.norm() / ref.norm().clamp_min(1e-30))


def spot_cases(device, gen):
    """(op, tolerance, fused call, reference call) on fresh random inputs; the reference runs the
    torch op in float64. act_norm_conv1d's dot runs in TF32 on a GPU (~3e-4 relative)."""
    import torch
    from pdiff_fast import DDPMScheduler
    from pdiff_fast.ops import (StepCoefs, act_norm_conv1d, act_norm_conv1d_torch, ddim_step, ddim_step_torch,
                                ddpm_step, ddpm_step_torch, eps_mse, eps_mse_torch, q_sample, q_sample_torch,
                                solver_step, solver_step_torch)

    def rnd(*shape, lo=None):
        x = torch.randn(*shape, generator=gen) if lo is None else torch.rand(*shape, generator=gen) * 2 - 1
        return x.to(device)

    def f64(kw):
        return {k: (v.double() if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}

    cases = []
    convs = {  # the shapes the denoiser and decoder blocks make, small
        "act_norm_conv1d (conv)": dict(x=rnd(3, 8, 12), weight=rnd(16, 8, 3) * 0.2, bias=rnd(16), padding=1),
        "act_norm_conv1d (add+act+residual)": dict(x=rnd(3, 8, 12), weight=rnd(8, 8, 3) * 0.2, bias=rnd(8),
                                                  padding=1, pre_act=True, add=rnd(3, 1, 12), residual=rnd(3, 8, 12)),
        "act_norm_conv1d (transposed, tanh)": dict(x=rnd(2, 4, 7), weight=rnd(4, 6, 5) * 0.2, bias=rnd(6),
                                                  stride=2, transposed=True, post_tanh=True),
        "act_norm_conv1d (K=5, 4 ch)": dict(x=rnd(5, 4, 33), weight=rnd(4, 4, 5) * 0.2, bias=None, padding=2),
    }
    for name, kw in convs.items():
        cases.append((name, 5e-3, lambda kw=kw: act_norm_conv1d(**kw), lambda kw=kw: act_norm_conv1d_torch(**f64(kw))))
    noising, step = DDPMScheduler().tables(device)
    x, eps, noise = rnd(5, 1, 12, lo=True), rnd(5, 1, 12), rnd(5, 1, 12)
    t = torch.tensor([0, 1, 17, 500, 999], device=device)
    cases.append(("ddpm_step (x_prev, x0)", 1e-5, lambda: torch.cat(ddpm_step(x, eps, t, noise, step)),
                  lambda: torch.cat(ddpm_step_torch(x.double(), eps.double(), t, noise.double(), step.double()))))
    cases.append(("ddim_step (eta 0.5)", 1e-5, lambda: torch.cat(ddim_step(x, eps, 0.31, 0.47, noise, 0.5)),
                  lambda: torch.cat(ddim_step_torch(x.double(), eps.double(), 0.31, 0.47, noise.double(), 0.5))))
    sde = StepCoefs(0.0104, 0.99995, 0.6266, 0.0149, -0.0048, 0.7792)  # a DPM-Solver++ 2M SDE step
    prev = rnd(5, 1, 12, lo=True)
    cases.append(("solver_step (DPM-Solver++ 2M SDE)", 1e-5, lambda: torch.cat(solver_step(x, eps, sde, prev, noise)),
                  lambda: torch.cat(solver_step_torch(x.double(), eps.double(), sde, prev.double(), noise.double()))))
    cases.append(("q_sample", 1e-5, lambda: q_sample(x, t, noising, noise)[0],
                  lambda: q_sample_torch(x.double(), t, noising.double(), noise.double())[0]))
    pred, target = rnd(6, 1, 12), rnd(6, 1, 12)

    def mse_and_grad(fn, dtype):
        p = pred.detach().to(dtype).clone().requires_grad_(True)  # a fresh leaf for each call
        loss = fn(p, target.to(dtype))
        loss.backward()
        return torch.cat([loss.detach().reshape(1), p.grad.reshape(-1)])

    cases.append(("eps_mse (loss, grad)", 1e-5, lambda: mse_and_grad(eps_mse, torch.float32),
                  lambda: mse_and_grad(eps_mse_torch, torch.float64)))
    return cases


def _flatten_check(device, gen) -> tuple[float, float]:
    """ParamSpec.flatten / unflatten_stacked (the extension where built) against torch.cat and views."""
    import torch
    from pdiff_fast import ParamSpec
    from benchmarks import common

    models = [common.mnist1d_cnn().to(device) for _ in range(3)]
    for m in models:
        for p in m.parameters():
            p.data.copy_(torch.randn(p.shape, generator=gen))
    names = [n for n, _ in models[0].named_parameters()]
    spec = ParamSpec.from_model(models[0], names)
    flat = spec.flatten(models)
    ref = torch.stack([torch.cat([p.detach().reshape(-1) for p in m.parameters()]) for m in models])
    stacked = spec.unflatten_stacked(ref)
    back = torch.cat([torch.stack([dict(m.named_parameters())[n].detach() for m in models]).reshape(3, -1)
                      - stacked[n].reshape(3, -1) for n in names], 1)
    e1, e2 = _rel(flat, ref), float(back.abs().max())
    return max(e1[0], e2), e1[1]


def memcheck_workload(device, gen_models: int = 8, steps: int = 3):
    """A tiny sample + decode + unflatten + population evaluation, as compute-sanitizer runs it
    (also run once in `spot`, so that its Triton variants are in the cache before the sanitizer)."""
    import torch
    from pdiff_fast import generate
    from benchmarks import common, test_population

    s = common.Setup(common.configs(True)["resnet18"], device)
    sched, _ = common.make_scheduler("ddpm", steps)
    # without the caching allocator (memcheck sees each tensor) a CUDA graph cannot capture its
    # allocations; the captured loop launches the same kernels as the uncaptured one
    graph = "auto" if os.environ.get("PYTORCH_NO_CUDA_MEMORY_CACHING") != "1" else False
    flat = generate(s.ae, s.den, sched, n=gen_models, progress=False, cuda_graph=graph)
    params = s.spec.unflatten_stacked(flat)
    args = test_population._to(test_population.population(10), device)
    res = test_population.PEERS["auto"](*args)
    if device.type == "cuda":
        torch.cuda.synchronize()
    ok = bool(flat.isfinite().all()) and all(bool(p.isfinite().all()) for p in params.values())
    return ok and bool(res.finite.all())


def phase_spot(ctx: Ctx) -> str:
    import torch
    from pdiff_fast import use_backend
    from benchmarks import test_population

    gen = torch.Generator().manual_seed(int(time.time_ns()) % (1 << 62))  # fresh inputs every run (METHOD.md)
    interpreted = os.environ.get("TRITON_INTERPRET") == "1"
    fused = "triton" if (ctx.gpu or interpreted) else "torch"
    label = "triton" + (" (interpreter)" if interpreted and not ctx.gpu else "") if fused == "triton" else \
        "torch (Triton skipped: no GPU, no interpreter)"
    spot = ctx.st.d["spot"]
    spot.clear()
    for op, tol, fast, ref in spot_cases(ctx.device, gen):
        try:
            with use_backend(fused):
                out = fast()
            ctx.sync()
            max_abs, rel = _rel(out, ref())
            ok = rel <= tol  # NaN fails
            spot.append({"op": op, "backend": label, "max_abs": float(f"{max_abs:.3g}"), "rel": float(f"{rel:.3g}"),
                         "tol": tol, "ok": ok})
        except (PhaseTimeout, Killed):
            raise
        except Exception as exc:  # noqa: BLE001
            spot.append({"op": op, "backend": label, "ok": False, "note": f"{type(exc).__name__}: {exc}"[:200]})
        ctx.st.save()
    max_abs, rel = _flatten_check(ctx.device, gen)
    from benchmarks import common
    spot.append({"op": "flatten + unflatten_stacked", "backend": common.auto_choices(ctx.device).get("flatten_params", "auto"),
                 "max_abs": max_abs, "rel": rel, "tol": 0.0, "ok": max_abs == 0.0})
    ctx.st.save()
    args = test_population._to(test_population.population(10, seed=int(gen.initial_seed() % 1000)), ctx.device)
    a, b = test_population.PEERS["auto"](*args), test_population.PEERS["reference"](*args)
    diff = float((a.predictions != b.predictions).float().mean())
    spot.append({"op": "population (batched vs one-by-one predictions)", "backend": "auto", "max_abs": diff,
                 "rel": diff, "tol": 0.0, "ok": diff == 0.0, "note": "fraction of predictions that differ"})
    ctx.st.save()
    ok = memcheck_workload(ctx.device)
    spot.append({"op": "memcheck workload (tiny generate + decode + evaluate)", "backend": "auto", "ok": ok,
                 "tol": "finite", "note": "run once to fill the Triton cache before compute-sanitizer"})
    bad = [s["op"] for s in spot if not s["ok"]]
    return f"{len(spot) - len(bad)}/{len(spot)} ok" + (f"; FAILED {bad}" if bad else "")
