"""Where the time goes: torch.profiler tables of the stages the H100 run found slow, for the next
GPU window to tune from (timing itself stays in the pytest-benchmark files).

    python -m benchmarks.profile_gpu --out profile.md          # CUDA: N = 1000, resnet18 config
    python -m benchmarks.profile_gpu --out profile.md --small  # CPU rehearsal: tiny sizes

Workloads, each under the backends it is compared across:
  sample     10 DDPM reverse steps for N latents (generate()'s seeded path): triton, torch
  ae_train   2 autoencoder training steps, K = 200: triton, torch
  population evaluate_population vs evaluate_one_by_one, N models of the MNIST-1D CNN (last 2 BN)
For each: wall time of the profiled call, total device (or CPU) self time, and the top kernels
by self time, so a reader sees which kernel to fix first.
"""
from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

from pdiff_fast import use_backend
from pdiff_fast.evaluation.population import evaluate_one_by_one, evaluate_population
from pdiff_fast.pipeline.train import fit_autoencoder

from . import common
from .test_population import population

TOP = 12


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _profiled(fn, device) -> tuple[float, str, float]:
    """(wall seconds, top-kernel table, total self time in ms) of one call after one warm-up call."""
    fn()
    _sync(device)
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        t0 = time.perf_counter()
        fn()
        _sync(device)
        wall = time.perf_counter() - t0
    key = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    events = prof.key_averages()
    attr = "self_device_time_total" if cuda and hasattr(events[0], "self_device_time_total") else key
    total_ms = sum(getattr(e, attr) for e in events) / 1e3
    table = events.table(sort_by=key, row_limit=TOP, max_name_column_width=60)
    return wall, table, total_ms


def workloads(device: torch.device, small: bool) -> dict[str, dict[str, object]]:
    s = common.Setup(common.configs(not small)["resnet18"], device)
    n = 16 if small else 1000
    sched, _ = common.make_scheduler("ddpm", 2 if small else 10)
    params = s.params(8 if small else 200)
    out: dict[str, dict[str, object]] = {"sample": {}, "ae_train": {}, "population": {}}
    for name in ("triton", "torch"):
        if name == "triton" and device.type != "cuda":
            continue  # Triton needs CUDA (its CPU interpreter would profile the interpreter)
        out["sample"][name] = (name, lambda: common.pdiff_sample(s.den, sched, n, s, seed=0))
        out["ae_train"][name] = (name, lambda: fit_autoencoder(s.ae, params, steps=2, progress=False))
    base, spec, flat, x, y = population(64 if small else 1000)
    base, flat, x, y = base.to(device), flat.to(device), x.to(device), y.to(device)
    out["population"]["batched"] = ("auto", lambda: evaluate_population(base, spec, flat, x, y, batch_size=1024))
    out["population"]["loop"] = ("auto", lambda: evaluate_one_by_one(base, spec, flat, x, y, batch_size=1024))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="profile.md")
    ap.add_argument("--small", action="store_true", help="tiny sizes (a CPU rehearsal)")
    args = ap.parse_args(argv)
    device = common.default_device()
    if device.type != "cuda" and not args.small:
        raise SystemExit("profile_gpu: no CUDA device; use --small for a CPU rehearsal")
    lines = [f"# Profile on {common.device_name(device)}", "",
             f"torch {torch.__version__}; top {TOP} ops by self {'CUDA' if device.type == 'cuda' else 'CPU'} time.", ""]
    for stage, variants in workloads(device, args.small).items():
        for variant, (backend_name, fn) in variants.items():
            with use_backend(backend_name):
                wall, table, total = _profiled(fn, device)
            lines += [f"## {stage} / {variant}", "", f"wall {wall * 1e3:.1f} ms, self time summed {total:.1f} ms", "",
                      "```", table, "```", ""]
            print(f"{stage}/{variant}: wall {wall * 1e3:.1f} ms", flush=True)
    with open(args.out, "w") as f:
        f.write("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
