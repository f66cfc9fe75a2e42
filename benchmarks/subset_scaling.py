"""Cost of the autoencoder presets against the subset size D (any subset size, whole-network generation).

    python -m benchmarks.subset_scaling --out benchmarks/results/            # D = 384 ... 1,000,000
    python -m benchmarks.subset_scaling --dims 100,500 --k 8 --out /tmp/ss   # a smoke run
    python -m benchmarks.subset_scaling --from-json --out benchmarks/results/  # the Markdown from the JSON

For each D in --dims and each preset in --presets (`small`, `lowrank`; built with
autoencoder_choice.build_autoencoder(preset, D)), three phases; the preset that `auto` picks at D
(choose_preset("auto", D)) is listed beside them.
- ae: pdiff_fast.pipeline.train.fit_autoencoder on a (K, D) float32 population (mean + K x 16 random
  coefficients times a random 16 x D basis, seed 0: low-rank structure; the timing does not depend
  on the values), full batch, default lr. One warm-up call (1 step), then one call of n + 1 steps;
  its checkpoint callback (every step, it only reads the clock) times steps 1..n (step 0 of that
  call is dropped too). n = --budget / (the warm-up step's seconds), within [--min-steps, --steps].
  Seconds per step: the median of the n. `lowrank`'s initialize (an SVD) runs inside every
  fit_autoencoder call, before the first step: it is timed on its own (in the timed call).
- denoiser: fit_diffusion of EMA(AE_CNN_bottleneck(latent numel, 1, channel_list=[16, 32, 64, 128]))
  (the pipeline's CPU widths) with DDPMScheduler(), full batch, on K random latents of the preset's
  latent_shape() in [-1, 1]; timed as `ae`.
- sample: generate() of K models, an untrained denoiser and autoencoder (the timing does not depend
  on the weights), the default DDPM scheduler truncated to its first S timesteps (999, 998, ...);
  it keeps noise_draws() of the full 1000-step scheduler, so generate picks the chunks and grain of
  a 1000-step run. Measured: the whole call and, inside it, the decode calls (ae.decode, timed by a
  wrapper); reverse loop = call - decode (initial noise, S denoiser calls + steps per chunk).
  Reported for 1000 steps: reverse loop x 1000 / S (extrapolated when S < 1000) + the measured
  decode. S = --budget / (seconds per step of a 2-step warm-up call), within [--sample-steps, 1000];
  the S-step call runs --repeats times, the one with the fastest reverse loop is reported. The
  denoiser is seeded alike at every D, so a preset whose latent does not change with D (lowrank)
  runs the same denoiser on the same values.
Each (preset, D, phase) runs in a fresh subprocess (`--worker`, one JSON line on stdout), torch
threads = --threads (default: all cores). Peak memory: ru_maxrss of that subprocess minus ru_maxrss of a subprocess
that only imports torch and pdiff_fast (the same imports); it includes the population (K x D x 4
bytes) in the `ae` phase. `small` is not run above --small-max-d (its activations are
64 channels per parameter per model: many GB and minutes per step at D = 127k): those cells say
"not run", with an estimate extrapolated linearly (a straight line in D) through its two largest
measured D. The tables give the log-log slope of seconds per step against D between consecutive
measured D (1: linear in D).

Writes subset_scaling_<dev>.json and subset_scaling_<dev>.md (--from-json: the Markdown again from
that JSON, nothing measured).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a file: make `benchmarks` and `pdiff_fast` importable
    sys.path.insert(0, str(ROOT))

from benchmarks.subset_scaling_tables import (  # noqa: E402,F401 (the Markdown half)
    DDPM_STEPS, DENOISER_WIDTHS, PHASE_TITLES, PHASES, POPULATION_RANK, _cells, _find, _key, device_info,
    estimate_not_run, markdown)


# --- the worker: one measurement ---------------------------------------------------------------

def _imports():
    """Everything a worker imports (the baseline subprocess imports the same)."""
    warnings.filterwarnings("ignore", message="input's size at dim=1 does not match num_features")
    import torch  # noqa: F401

    import pdiff_fast  # noqa: F401
    from pdiff_fast.diffusion import sample, schedulers  # noqa: F401
    from pdiff_fast.nn import autoencoder_choice, denoiser  # noqa: F401
    from pdiff_fast.pipeline import train  # noqa: F401


def peak_rss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


def population(k: int, d: int, seed: int = 0):
    """(k, d) float32: mean + k x POPULATION_RANK coefficients times a random basis."""
    import torch

    g = torch.Generator().manual_seed(seed)
    mean = 0.1 * torch.randn(d, generator=g)
    basis = torch.randn(POPULATION_RANK, d, generator=g) * 0.01
    coef = torch.randn(k, POPULATION_RANK, generator=g)
    return torch.addmm(mean, coef, basis)


class _Clock:
    """A checkpoint callback that only reads the clock (called after each step but the last)."""

    def __init__(self):
        self.stamps: list[float] = []

    def __call__(self, tensors, meta) -> None:
        self.stamps.append(time.perf_counter())


def _steps_for(budget: float, per_step: float, lo: int, hi: int) -> int:
    return max(lo, min(hi, int(budget / max(per_step, 1e-9))))


def _timed_fit(fit, budget: float, min_steps: int, max_steps: int, excluded=None) -> dict:
    """fit(steps, checkpoint, checkpoint_every): a 1-step warm-up call, then n + 1 steps with
    steps 1..n timed. `excluded()` (called after the warm-up call) returns the seconds of that
    call that are not its step (lowrank's initialize), left out of the estimate that sets n."""
    t0 = time.perf_counter()
    fit(1, None, 0)
    warm = time.perf_counter() - t0
    n = _steps_for(budget, warm - (excluded() if excluded else 0.0), min_steps, max_steps)
    clock = _Clock()
    t0 = time.perf_counter()
    fit(n + 1, clock, 1)
    end = time.perf_counter()
    stamps = clock.stamps + [end]
    per = [b - a for a, b in zip(stamps, stamps[1:])]
    return {"step_s": statistics.median(per),
            "step_s_mean": sum(per) / len(per), "step_s_min": min(per), "step_s_all": per, "steps_timed": n,
            "warmup_call_s": warm, "first_step_of_timed_call_s": clock.stamps[0] - t0}


def measure(phase: str, preset: str, d: int, k: int, *, budget: float = 20.0, min_steps: int = 2,
            max_steps: int = 10, sample_steps: int = 20, repeats: int = 2, seed: int = 0) -> dict:
    """One measurement in this process; returns the JSON-able record (peak_rss_kib: this process's)."""
    _imports()
    import torch

    from pdiff_fast.nn.autoencoder_choice import build_autoencoder, choose_preset
    from pdiff_fast.nn.denoiser import EMA, AE_CNN_bottleneck
    from pdiff_fast.diffusion.schedulers import DDPMScheduler
    from pdiff_fast.diffusion.sample import generate
    from pdiff_fast.pipeline.train import fit_autoencoder, fit_diffusion

    rec = {"phase": phase, "preset": preset, "d": d, "k": k, "auto": choose_preset("auto", d),
           "threads": torch.get_num_threads(), "status": "ok"}
    if phase == "baseline":
        rec["peak_rss_kib"] = peak_rss_kib()
        return rec
    with torch.device("meta"):  # the latent shape without allocating the autoencoder
        latent_shape = tuple(build_autoencoder(preset, d).latent_shape())
    rec["latent_shape"] = list(latent_shape)
    latent_numel = math.prod(latent_shape)

    if phase == "ae":
        x = population(k, d, seed)
        rec["population_mib"] = x.numel() * 4 / 2**20
        torch.manual_seed(seed)
        ae = build_autoencoder(preset, d)
        rec["ae_params"] = sum(p.numel() for p in ae.parameters())
        inits: list[float] = []
        if hasattr(ae, "initialize"):
            init = ae.initialize

            def timed_init(data):
                t = time.perf_counter()
                init(data)
                inits.append(time.perf_counter() - t)

            ae.initialize = timed_init  # fit_autoencoder calls ae.initialize(params)

        def fit(steps, checkpoint, every):
            fit_autoencoder(ae, x, steps=steps, progress=False, checkpoint=checkpoint, checkpoint_every=every)

        rec.update(_timed_fit(fit, budget, min_steps, max_steps, excluded=lambda: inits[-1] if inits else 0.0))
        rec["init_s"] = inits[-1] if inits else None  # the timed call's
        rec["init_warmup_s"] = inits[0] if inits else None
    elif phase == "denoiser":
        g = torch.Generator().manual_seed(seed + 1)
        latents = torch.rand((k, *latent_shape), generator=g) * 2 - 1
        torch.manual_seed(seed)
        model = EMA(AE_CNN_bottleneck(latent_numel, 1, channel_list=DENOISER_WIDTHS))
        rec["denoiser_params"] = sum(p.numel() for p in model.model.parameters())
        sched = DDPMScheduler()

        def fit(steps, checkpoint, every):
            fit_diffusion(model, latents, sched, steps=steps, seed=seed, progress=False, checkpoint=checkpoint,
                          checkpoint_every=every)

        rec.update(_timed_fit(fit, budget, min_steps, max_steps))
    elif phase == "sample":
        torch.manual_seed(seed)
        ae = build_autoencoder(preset, d).eval()
        torch.manual_seed(seed)  # the same denoiser weights at every D of a latent shape
        den = AE_CNN_bottleneck(latent_numel, 1, channel_list=DENOISER_WIDTHS).eval()
        decode = ae.decode
        calls: list[tuple[int, float]] = []

        def timed_decode(z, **kw):
            t = time.perf_counter()
            out = decode(z, **kw)
            calls.append((z.shape[0], time.perf_counter() - t))
            return out

        ae.decode = timed_decode  # generate decodes with in_grains(autoencoder.decode, grain, z)
        den_rows: list[int] = []
        den.register_forward_pre_hook(lambda m, a: den_rows.append(a[0].shape[0]))

        def run(steps: int) -> tuple[float, float]:
            calls.clear(), den_rows.clear()
            t = time.perf_counter()
            generate(ae, den, TruncatedDDPM(steps), k, device="cpu", seed=seed, progress=False)
            total = time.perf_counter() - t
            return total, sum(s for _, s in calls)

        total, dec = run(2)  # warm-up, and the per-step estimate
        s = _steps_for(budget, (total - dec) / 2, sample_steps, DDPM_STEPS)
        runs = [run(s) for _ in range(repeats)]  # the fastest loop of `repeats` calls, with its decode
        total, dec = min(runs, key=lambda r: r[0] - r[1])
        loop = total - dec
        rec.update({"loop_steps": s, "loop_s": loop, "loop_s_all": [t - d for t, d in runs], "decode_s": dec,
                    "call_s": total,
                    "step_s": loop / s, "sample_s": loop * DDPM_STEPS / s + dec, "extrapolated": s < DDPM_STEPS,
                    "grain": calls[0][0], "decode_calls": len(calls), "denoiser_calls_per_step": len(den_rows) // s})
    else:
        raise ValueError(f"unknown phase {phase!r}")
    rec["peak_rss_kib"] = peak_rss_kib()
    return rec


def TruncatedDDPM(steps: int):
    """The default DDPM scheduler, run over its first `steps` timesteps only; noise_draws() stays
    the full schedule's, so generate() sizes its chunks as for a 1000-step run."""
    from pdiff_fast.diffusion.schedulers import DDPMScheduler

    class _Truncated(DDPMScheduler):
        def timesteps(self):
            return super().timesteps()[:steps]

        def noise_draws(self):
            return 1 + self.num_train_timesteps

    return _Truncated()


# --- the parent: a subprocess per measurement --------------------------------------------------

def worker_command(phase: str, preset: str, d: int, args) -> list[str]:
    return [sys.executable, "-m", "benchmarks.subset_scaling", "--worker", "--phase", phase, "--preset", preset,
            "--d", str(d), "--k", str(args.k), "--budget", str(args.budget), "--min-steps", str(args.min_steps),
            "--steps", str(args.steps), "--sample-steps", str(args.sample_steps), "--repeats", str(args.repeats),
            "--threads", str(args.threads)]


def run_subprocess(phase: str, preset: str, d: int, args) -> dict:
    """One measurement in a fresh subprocess; its JSON line, or a record of the failure."""
    threads = args.threads or os.cpu_count() or 1
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(threads)}
    try:
        proc = subprocess.run(worker_command(phase, preset, d, args), cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"phase": phase, "preset": preset, "d": d, "status": "failed", "why": f"over {args.timeout} s"}
    if proc.returncode != 0:
        return {"phase": phase, "preset": preset, "d": d, "status": "failed",
                "why": f"exit {proc.returncode}: {proc.stderr[-2000:]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def collect(args, runner=run_subprocess, log=print) -> tuple[int, list[dict]]:
    """(baseline ru_maxrss KiB, records): every (preset, D, phase), `small` above small_max_d not run."""
    base = runner("baseline", "lowrank", 1, args)["peak_rss_kib"]
    log(f"baseline (imports only): {base / 1024:.0f} MiB")
    records = []
    for d in args.dims:
        for preset in args.presets:
            for phase in PHASES:
                if preset == "small" and d > args.small_max_d:
                    records.append({"phase": phase, "preset": preset, "d": d, "status": "not run"})
                    continue
                t = time.perf_counter()
                r = runner(phase, preset, d, args)
                if r["status"] == "ok":
                    r["peak_mib"] = (r["peak_rss_kib"] - base) / 1024
                records.append(r)
                log(f"D={d} {preset} {phase}: {_brief(r)} ({time.perf_counter() - t:.0f} s wall)")
    estimate_not_run(records)
    return base, records


def _brief(r: dict) -> str:
    if r["status"] != "ok":
        return r["status"] + (f" ({r['why'][:300]})" if "why" in r else "")
    what = f"{r['sample_s']:.3g} s for {DDPM_STEPS} steps" if r["phase"] == "sample" else f"{r['step_s']:.3g} s/step"
    return f"{what}, peak {r['peak_mib']:.0f} MiB"


def meta_for(args, baseline_kib: int, wall_s: float) -> dict:
    return {"device": device_info(), "dims": args.dims, "presets": args.presets, "k": args.k,
            "small_max_d": args.small_max_d, "budget": args.budget, "min_steps": args.min_steps, "steps": args.steps,
            "sample_steps": args.sample_steps, "repeats": args.repeats, "ddpm_steps": DDPM_STEPS, "denoiser_widths": DENOISER_WIDTHS,
            "population_rank": POPULATION_RANK, "threads": args.threads or os.cpu_count(),
            "baseline_kib": baseline_kib, "baseline_mib": baseline_kib / 1024, "wall_s": wall_s}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dims", default="384,10000,32842,127000,1000000", help="comma-separated D values")
    p.add_argument("--presets", default="small,lowrank")
    p.add_argument("--k", type=int, default=200, help="parameter vectors (training set and models sampled)")
    p.add_argument("--small-max-d", type=int, default=32842, help="largest D `small` runs at (above: estimated)")
    p.add_argument("--budget", type=float, default=20.0, help="seconds of timed steps per measurement (about)")
    p.add_argument("--min-steps", type=int, default=3, help="fewest timed training steps")
    p.add_argument("--steps", type=int, default=10, help="most timed training steps")
    p.add_argument("--sample-steps", type=int, default=20, help="fewest reverse steps timed (at most 1000)")
    p.add_argument("--repeats", type=int, default=2, help="timed sampling calls (the fastest is reported)")
    p.add_argument("--threads", type=int, default=0, help="torch threads per measurement (0: all cores)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per measurement subprocess")
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--from-json", action="store_true",
                   help="measure nothing: rewrite the Markdown from the JSON already in --out")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--phase", help=argparse.SUPPRESS)
    p.add_argument("--preset", help=argparse.SUPPRESS)
    p.add_argument("--d", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        import torch

        torch.set_num_threads(args.threads or os.cpu_count() or 1)
        rec = measure(args.phase, args.preset, args.d, args.k, budget=args.budget, min_steps=args.min_steps,
                      max_steps=args.steps, sample_steps=args.sample_steps, repeats=args.repeats)
        print(json.dumps(rec), flush=True)
        return
    out = Path(args.out)
    if args.from_json:
        data = json.loads((out / "subset_scaling_cpu.json").read_text())
        text = markdown(data["meta"], data["results"])
        (out / "subset_scaling_cpu.md").write_text(text)
        print(text)
        return
    args.dims = [int(v) for v in args.dims.split(",")]
    args.presets = args.presets.split(",")
    _imports()
    t0 = time.perf_counter()
    base, records = collect(args)
    meta = meta_for(args, base, time.perf_counter() - t0)
    out.mkdir(parents=True, exist_ok=True)
    (out / "subset_scaling_cpu.json").write_text(json.dumps({"meta": meta, "results": records}, indent=1))
    text = markdown(meta, records)
    (out / "subset_scaling_cpu.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
