"""The headline run of a GPU window (issue 23): one process that spot-checks every fused op against
torch, then times each headline target beside its peers on the named device, with the counted
floor, and profiles one sampling step. benchmarks/gpu_headline.sh runs it between the build and
the owed tests; see benchmarks/README.md ("The headline command").

    python -m benchmarks.gpu_headline run OUT --deadline EPOCH   # the phases below
    python -m benchmarks.gpu_headline table OUT                  # the final table (printed last)
    python -m benchmarks.gpu_headline record OUT NAME RC SECONDS BUDGET NOTE   # a shell phase
    python -m benchmarks.gpu_headline cold OUT --peer pdiff|compile --json F  # one cold start
    python -m benchmarks.gpu_headline memcheck                   # the compute-sanitizer workload

Phases of `run`, in order, each time-boxed (SIGALRM) and never into the minimum time kept for the
phases after it; every result is saved the moment it is measured (headline.json, then summary.md
rewritten), so a kill leaves a current summary:
  setup        the resnet18 configuration (common.Setup), copy bandwidth and fp32/TF32 matmul
               rates (conftest.measure_hardware: the floor's inputs), the auto backend's choices
  spot         each fused op (Triton) against its torch reference on fresh random inputs: max
               abs / relative error; flatten / unflatten; batched vs one-by-one population
  cold_pdiff   time to the first N models in a fresh process, empty Triton cache (generate())
  cold_compile the same for torch.compile of the same modules, empty inductor + Triton caches
  sample_step  DDPM time per step at N: auto (CUDA graph replay), auto uncaptured, torch eager,
               torch.compile
  e2e          generate(N models, every step) + decode + unflatten, auto; torch.compile warm
  decode       decode + unflatten of N latents: auto, torch eager, torch.compile
  population   evaluate_population vs the one-by-one loop, N MNIST-1D CNNs
  train        autoencoder and denoiser training steps, auto vs torch eager
  profile      torch.profiler top 15 of one sampling step (auto, uncaptured) -> profile.txt
The cold starts run before the warm timings on purpose: they fill the caches this process then
reads (its compile and JIT would otherwise redo the same work inside the window), and they must
start from empty caches, which no earlier phase of theirs has touched.

Without CUDA this is a REHEARSAL: CPU tensors, tiny sizes, the Triton spot checks in Triton's
interpreter, no graph peer, no floor, and every output says that its figures are not GPU figures.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

# The files the headline command may leave in OUT (the run tool returns at most 8; a save's
# temporary file is the eighth for a moment)
OUT_FILES = ("summary.md", "headline.json", "env.txt", "build.log", "profile.txt", "tests.txt", "memcheck.txt")
TOP = 15  # profiler rows

# goals of issue 23 ("Then on a GPU"), checked only on a GPU
GOALS = {
    "sample_step": "auto <= 0.5 ms/step and >= 2x torch.compile",
    "e2e": "< 1 s for N models x every step + decode + unflatten",
    "decode": "auto <= torch.compile",
    "population": "batched >= 10x the one-by-one loop",
    "train_ae": "auto <= torch eager",
    "train_den": "auto <= torch eager",
    "cold": "reported (no goal)",
}


class PhaseTimeout(Exception):
    pass


class Killed(BaseException):  # not an Exception: no phase's `except Exception` may swallow it
    pass


# --- state: headline.json is the one record; summary.md is rendered from it -------------------------

def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class State:
    def __init__(self, out: Path, data: dict):
        self.out, self.d = out, data

    @classmethod
    def load(cls, out: Path) -> "State":
        path = out / "headline.json"
        data = json.loads(path.read_text()) if path.is_file() else {}
        data.setdefault("phases", [])
        data.setdefault("spot", [])
        data.setdefault("rows", [])
        data.setdefault("info", {})
        return cls(out, data)

    def save(self) -> None:
        # a signal arriving mid-write must not leave a half summary: block them for the write
        blocked = {signal.SIGTERM, signal.SIGINT, signal.SIGALRM}
        old = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
        try:
            _atomic_write(self.out / "headline.json", json.dumps(self.d, indent=1, default=str))
            _atomic_write(self.out / "summary.md", render_summary(self.d))
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)

    def phase(self, name: str, **fields) -> dict:
        """The phase's entry, replaced in place when the name is already there."""
        entry = {"name": name, **fields}
        for i, p in enumerate(self.d["phases"]):
            if p["name"] == name:
                self.d["phases"][i] = entry
                return entry
        self.d["phases"].append(entry)
        return entry

    def row(self, **fields) -> None:
        self.d["rows"].append(fields)
        self.save()


def _ms(s) -> str:
    if s is None:
        return "—"
    if s >= 1.0:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.2f} ms"
    return f"{s * 1e6:.1f} µs"


def _rows(d: dict, target: str) -> dict:
    return {r["peer"]: r for r in d["rows"] if r["target"] == target and r.get("time_s") is not None}


def verdicts(d: dict) -> list[tuple[str, str, str]]:
    """(target, measured summary, verdict) per headline target; no verdict without a GPU."""
    gpu = d.get("mode") == "gpu"
    out = []

    def verdict(ok: bool | None, how: str) -> str:
        if not gpu:
            return "no verdict (not a GPU)"
        return "no data" if ok is None else (("MET " if ok else "MISSED ") + how)

    r = _rows(d, "sample_step")
    a, c = r.get("auto (CUDA graph)") or r.get("auto"), r.get("torch.compile")
    ok = None
    how = ""
    if a:
        speed = c["time_s"] / a["time_s"] if c else None
        ok = a["time_s"] <= 0.5e-3 and (speed is None or speed >= 2)
        how = f"{_ms(a['time_s'])}/step, {speed:.2f}x compile" if speed else f"{_ms(a['time_s'])}/step"
    out.append(("sample_step", how, verdict(ok, GOALS["sample_step"])))
    r = _rows(d, "e2e")
    a = r.get("auto")
    out.append(("e2e", _ms(a["time_s"]) if a else "", verdict(None if not a else a["time_s"] < 1.0, GOALS["e2e"])))
    for target, peer in (("decode", "torch.compile"), ("train_ae", "torch eager"), ("train_den", "torch eager")):
        r = _rows(d, target)
        a, p = r.get("auto"), r.get(peer)
        ok = None if not (a and p) else a["time_s"] <= p["time_s"] * 1.05  # 5%: two timings' spread
        how = f"{p['time_s'] / a['time_s']:.2f}x {peer}" if a and p else ""
        out.append((target, how, verdict(ok, GOALS[target])))
    r = _rows(d, "population")
    a, p = r.get("auto (batched)"), r.get("one-by-one loop")
    ok = None if not (a and p) else p["time_s"] / a["time_s"] >= 10
    out.append(("population", f"{p['time_s'] / a['time_s']:.2f}x the loop" if a and p else "",
                verdict(ok, GOALS["population"])))
    r = _rows(d, "cold")
    out.append(("cold", ", ".join(f"{k} {_ms(v['time_s'])}" for k, v in r.items()), "reported"))
    return out


def render_table(d: dict) -> str:
    """The measured rows, one line each, with the floor where there is one."""
    lines = ["| target | peer | time | per | floor | % of floor | note |", "|---|---|---:|---|---:|---:|---|"]
    for r in d["rows"]:
        floor = r.get("floor_s")
        t = r.get("time_s")
        pct = f"{100 * floor / t:.0f}%" if floor and t else "—"
        lines.append(f"| {r['target']} | {r['peer']} | {_ms(t) if t is not None else 'not measured'} | "
                     f"{r.get('per', 'call')} | {_ms(floor)} | {pct} | {r.get('note', '')} |")
    return "\n".join(lines)


def render_summary(d: dict) -> str:
    gpu = d.get("mode") == "gpu"
    head = "GPU run" if gpu else "REHEARSAL on a CPU: no figure here is a GPU figure"
    info = d.get("info", {})
    lines = [f"# gpu_headline: {head}", "",
             f"device: {info.get('device', d.get('device', 'unknown'))}; commit {d.get('commit', '?')}; "
             f"torch {info.get('torch', '?')}, triton {info.get('triton', '?')}; started {d.get('started_utc', '?')}, "
             f"updated {time.strftime('%H:%M:%S', time.gmtime())} UTC", ""]
    if info.get("hardware"):
        hw = info["hardware"]
        lines += [f"measured here: copy {hw['hw_copy_bytes_per_s'] / 1e9:.0f} GB/s (read + write), matmul fp32 "
                  f"{hw['hw_matmul_fp32_flops_per_s'] / 1e12:.1f} TFLOP/s, TF32 "
                  f"{hw['hw_matmul_tf32_flops_per_s'] / 1e12:.1f} TFLOP/s (the floor's rates)", ""]
    if info.get("sizes"):
        lines += [f"sizes: {info['sizes']}", ""]
    if info.get("auto_backends"):
        lines += [f"auto picks: {info['auto_backends']}", ""]
    lines += ["## Phases", "", "| phase | status | seconds | budget | note |", "|---|---|---:|---:|---|"]
    for p in d["phases"]:
        lines.append(f"| {p['name']} | {p.get('status', '?')} | {p.get('seconds', '')} | {p.get('budget', '')} | "
                     f"{str(p.get('note', '')).replace('|', '/')[:200]} |")
    if d["spot"]:
        bad = [s for s in d["spot"] if not s.get("ok")]
        lines += ["", f"## Spot checks ({len(d['spot']) - len(bad)} of {len(d['spot'])} within tolerance)", "",
                  "| op | backend | max abs err | rel err | tolerance | ok |", "|---|---|---:|---:|---:|---|"]
        for s in d["spot"]:
            lines.append(f"| {s['op']} | {s.get('backend', '')} | {s.get('max_abs', '—')} | {s.get('rel', '—')} | "
                         f"{s.get('tol', '')} | {'yes' if s.get('ok') else 'NO'} {s.get('note', '')} |")
    lines += ["", "## Targets", "", "| target | measured | verdict |", "|---|---|---|"]
    lines += [f"| {t} | {m} | {v} |" for t, m, v in verdicts(d)]
    lines += ["", "## Timings (median of the reps; floor = max(FLOPs / TF32 rate, fewest bytes / copy rate))", "",
              render_table(d), ""]
    return "\n".join(lines)


def final_table(d: dict) -> str:
    """What the shell prints last: it is what the run tool's output tail surely holds."""
    gpu = d.get("mode") == "gpu"
    info = d.get("info", {})
    lines = ["=" * 100,
             f"HEADLINE {'on ' + str(info.get('device')) if gpu else 'REHEARSAL on a CPU (no GPU figures)'} "
             f"commit {d.get('commit', '?')}",
             "phases: " + "; ".join(f"{p['name']} {p.get('status')} {p.get('seconds', '')}s" for p in d["phases"])]
    if d["spot"]:
        bad = [s["op"] for s in d["spot"] if not s.get("ok")]
        worst = max((s.get("rel") or 0) for s in d["spot"])
        lines.append(f"spot checks: {len(d['spot']) - len(bad)}/{len(d['spot'])} ok, worst rel err {worst:.2e}"
                     + (f"; FAILED: {', '.join(bad)}" if bad else ""))
    lines += [render_table(d), "", "| target | measured | verdict |", "|---|---|---|"]
    lines += [f"| {t} | {m} | {v} |" for t, m, v in verdicts(d)]
    return "\n".join(lines)


# --- phases ------------------------------------------------------------------------------------------

class Sizes:
    def __init__(self, gpu: bool):
        # per-step peers run the first `steps` steps of the schedule; the graph captures graph_steps
        self.n = 1000 if gpu else 8
        self.graph_steps = 100 if gpu else 0
        self.steps = 20 if gpu else 2
        self.e2e_steps = None if gpu else 3  # None: every step of the 1000 (DDPM)
        self.pop_n = 1000 if gpu else 10
        self.train_k, self.train_steps = (200, 5) if gpu else (4, 1)
        self.reps = 5 if gpu else 3

    def describe(self) -> str:
        return (f"N = {self.n}; per-step timings over {self.steps} steps (graph: {self.graph_steps}); end to end "
                f"{self.e2e_steps or 'all 1000'} steps; population N = {self.pop_n}; training K = {self.train_k}, "
                f"{self.train_steps} steps per call; up to {self.reps} timed reps after a warm-up")


class Ctx:
    def __init__(self, st: State, args):
        import torch

        self.st, self.args, self.torch = st, args, torch
        self.gpu = st.d["mode"] == "gpu"
        self.device = torch.device("cuda" if self.gpu else "cpu")
        self.sizes = Sizes(self.gpu)
        self.s = None  # common.Setup, made in `setup`
        self.hw: dict = {}
        self.compiled: dict = {}
        self.compile_backend = os.environ.get("PDIFF_HEADLINE_COMPILE_BACKEND", "inductor")
        if not self.gpu:
            torch.set_num_threads(1)  # a shared 2-core machine: spin-waiting threads only add noise

    def sync(self) -> None:
        if self.gpu:
            self.torch.cuda.synchronize()

    def floor(self, work: dict | None) -> float | None:
        if not work or not self.hw:
            return None
        return max(work["flops"] / self.hw["hw_matmul_tf32_flops_per_s"], work["bytes_min"] / self.hw["hw_copy_bytes_per_s"])

    def timed(self, fn, reps: int | None = None) -> dict:
        """A warm-up call, then up to `reps` timed calls (host clock around a device sync)."""
        t0 = time.perf_counter()
        fn()
        self.sync()
        first = time.perf_counter() - t0
        times = []
        for _ in range(reps or self.sizes.reps):
            t0 = time.perf_counter()
            fn()
            self.sync()
            times.append(time.perf_counter() - t0)
        return {"median": statistics.median(times), "min": min(times), "reps": len(times), "first_s": round(first, 4)}

    def measure(self, target: str, peer: str, fn, *, per_div: int = 1, per: str = "call", work=None,
                reps: int | None = None, note: str = "") -> dict | None:
        """Time fn and save the row at once; a failure saves a row with the reason and goes on."""
        try:
            r = self.timed(fn, reps)
        except (PhaseTimeout, Killed):
            raise
        except Exception as exc:  # noqa: BLE001 - one peer failing must not cost the others
            self.st.row(target=target, peer=peer, time_s=None, per=per, note=f"FAILED {type(exc).__name__}: "
                        f"{str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ''}")
            if self.gpu:
                self.torch.cuda.empty_cache()
            return None
        row = {"target": target, "peer": peer, "time_s": r["median"] / per_div, "per": per,
               "floor_s": self.floor(work), "reps": r["reps"], "min_s": r["min"] / per_div,
               "first_call_s": r["first_s"], "device": self.st.d["info"].get("device"),
               "note": note + (f"; first call {r['first_s']:.2f} s" if r["first_s"] > 1 else "")}
        if work:
            row.update(flops=work["flops"], bytes_min=work["bytes_min"])
        self.st.row(**row)
        return row

    def compile(self, what: str):
        """torch.compile of the module the benchmarks compile (common.Setup.compiled), once per process."""
        if what not in self.compiled:
            target = self.s.den if what == "denoiser" else self.s.ae.decode
            self.compiled[what] = self.torch.compile(target, backend=self.compile_backend)
        return self.compiled[what]


def phase_setup(ctx: Ctx) -> str:
    import torch
    from benchmarks import common
    from benchmarks.conftest import measure_hardware

    ctx.s = common.Setup(common.configs(True)["resnet18"], ctx.device)
    info = ctx.st.d["info"]
    info.update(device=common.device_name(ctx.device), config=ctx.s.describe(), sizes=ctx.sizes.describe(),
                auto_backends=common.auto_choices(ctx.device), torch_threads=torch.get_num_threads())
    ctx.st.save()
    ctx.hw = measure_hardware(ctx.device)
    info["hardware"] = ctx.hw
    return (f"D = {ctx.s.D}, latent {ctx.s.latent_shape}; " + ("floor rates measured" if ctx.hw else
                                                            "no floor on a CPU"))


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
    from pdiff_fast.ops import (act_norm_conv1d, act_norm_conv1d_torch, ddim_step, ddim_step_torch, ddpm_step,
                                ddpm_step_torch, eps_mse, eps_mse_torch, q_sample, q_sample_torch)

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


def _cache_env(scratch: Path, tag: str) -> dict:
    """Fresh, empty cache folders for one cold process."""
    env = dict(os.environ)
    for var, sub in (("TRITON_CACHE_DIR", "triton"), ("TORCHINDUCTOR_CACHE_DIR", "inductor")):
        path = scratch / f"cold_{tag}_{sub}"
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        env[var] = str(path)
    return env


def _merge_cache(src: Path, dst: str | None) -> None:
    """Copy a cold run's cache entries into this process's cache folder, so the warm timings reuse
    them (Triton and inductor look entries up on disk when a variant is new to the process)."""
    if dst and src.is_dir():
        shutil.copytree(src, dst, dirs_exist_ok=True)


def _cold(ctx: Ctx, peer: str, budget: float) -> str:
    scratch = Path(ctx.args.scratch)
    env = _cache_env(scratch, peer)
    env["PDIFF_HEADLINE_COMPILE_BACKEND"] = ctx.compile_backend
    result = scratch / f"cold_{peer}.json"
    result.unlink(missing_ok=True)
    steps = ctx.sizes.e2e_steps
    cmd = [sys.executable, "-m", "benchmarks.gpu_headline", "cold", str(ctx.st.out), "--peer", peer,
           "--json", str(result), "--n", str(ctx.sizes.n)] + (["--steps", str(steps)] if steps else [])
    t0 = time.perf_counter()
    name = {"pdiff": "pdiff_fast auto (generate)", "compile": f"torch.compile ({ctx.compile_backend})"}[peer]
    try:
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=max(budget - 2, 1))
    except subprocess.TimeoutExpired:
        wall = time.perf_counter() - t0
        ctx.st.row(target="cold", peer=name, time_s=None, per=f"first {ctx.sizes.n} models",
                   note=f"cut at {wall:.0f} s: the cold start takes longer than that")
        return f"cut at {wall:.0f} s"
    wall = time.perf_counter() - t0
    if done.returncode != 0 or not result.is_file():
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or [""]
        ctx.st.row(target="cold", peer=name, time_s=None, per=f"first {ctx.sizes.n} models",
                   note=f"FAILED rc {done.returncode}: {tail[0][:200]}")
        return f"failed rc {done.returncode}"
    r = json.loads(result.read_text())
    to_models = r["import_s"] + r["setup_s"] + r["first_models_s"]
    ctx.st.row(target="cold", peer=name, time_s=to_models, per=f"process start to first {ctx.sizes.n} models",
               note=f"imports {r['import_s']:.1f} s, models built {r['setup_s']:.1f} s, first call "
                    f"{r['first_models_s']:.2f} s, warm call {_ms(r.get('warm_models_s'))}; process {wall:.1f} s; "
                    f"{r['steps']} steps; caches empty at start: {r['caches_empty']}")
    _merge_cache(Path(env["TRITON_CACHE_DIR"]), os.environ.get("TRITON_CACHE_DIR"))
    _merge_cache(Path(env["TORCHINDUCTOR_CACHE_DIR"]), os.environ.get("TORCHINDUCTOR_CACHE_DIR"))
    return f"{to_models:.1f} s to the first models"


def phase_cold_pdiff(ctx: Ctx, budget: float) -> str:
    return _cold(ctx, "pdiff", budget)


def phase_cold_compile(ctx: Ctx, budget: float) -> str:
    return _cold(ctx, "compile", budget)


def phase_sample_step(ctx: Ctx) -> str:
    from pdiff_fast import use_backend
    from benchmarks import common, test_sample

    s, z = ctx.s, ctx.sizes
    n = z.n
    work = s.work("sample", n, 1)
    sched, _ = common.make_scheduler("ddpm", z.steps)
    if ctx.gpu:  # what generate() runs by default on CUDA: the captured loop, replayed
        gsched, _ = common.make_scheduler("ddpm", z.graph_steps)
        with use_backend("auto"):
            graphed = test_sample.GraphedLatentSampler(s.den, gsched, n, s.latent_shape, s.device, s.sample_plan(n).grain)
        ctx.measure("sample_step", "auto (CUDA graph)", lambda: graphed.sample(seed=0), per_div=z.graph_steps,
                    per="step", work=work, note=f"replay of {z.graph_steps} captured steps / {z.graph_steps}")
        del graphed
    peers = [("auto", "auto", s.den), ("torch eager", "torch", s.den)]
    for peer, backend_name, model in peers:
        def fn(backend_name=backend_name, model=model):
            with use_backend(backend_name):
                common.pdiff_sample(model, sched, n, s, seed=0)
        ctx.measure("sample_step", peer, fn, per_div=z.steps, per="step", work=work,
                    note=f"{z.steps} steps, uncaptured" if peer == "auto" else f"{z.steps} steps")
    den_c = ctx.compile("denoiser")

    def fn_c():
        with use_backend("torch"):
            common.pdiff_sample(den_c, sched, n, s, seed=0)
    ctx.measure("sample_step", "torch.compile", fn_c, per_div=z.steps, per="step", work=work,
                note=f"{z.steps} steps, backend {ctx.compile_backend}")
    return "done"


def phase_e2e(ctx: Ctx) -> str:
    from pdiff_fast import DDPMScheduler, generate, use_backend
    from benchmarks import common

    s, z = ctx.s, ctx.sizes
    n, steps = z.n, z.e2e_steps or 1000
    sched = common.make_scheduler("ddpm", z.e2e_steps)[0] if z.e2e_steps else DDPMScheduler()
    sw, dw = s.work("sample", n, steps), s.work("decode", n)
    work = {"flops": sw["flops"] + dw["flops"], "bytes_min": sw["bytes_min"] + dw["bytes_min"]}

    def auto():
        with use_backend("auto"):
            flat = generate(s.ae, s.den, sched, n=n, progress=False)
            s.spec.unflatten_stacked(flat)
    ctx.measure("e2e", "auto", auto, work=work, reps=2,
                note=f"generate() defaults ({'CUDA graph, ' if ctx.gpu else ''}{steps} steps) + unflatten")
    den_c, dec_c = ctx.compile("denoiser"), ctx.compile("decode")

    def compiled():
        with use_backend("torch"):
            common.pdiff_decode_unflatten(dec_c, s, common.pdiff_sample(den_c, sched, n, s, seed=0))
    ctx.measure("e2e", "torch.compile", compiled, work=work, reps=1, note=f"warm caches, {steps} steps")
    return "done"


def phase_decode(ctx: Ctx) -> str:
    from pdiff_fast import use_backend
    from benchmarks import common

    s, n = ctx.s, ctx.sizes.n
    zl = s.latents(n)
    work = s.work("decode", n)
    for peer, backend_name in (("auto", "auto"), ("torch eager", "torch")):
        def fn(backend_name=backend_name):
            with use_backend(backend_name):
                common.pdiff_decode_unflatten(s.ae.decode, s, zl)
        ctx.measure("decode", peer, fn, work=work, reps=10 if ctx.gpu else 3)
    dec_c = ctx.compile("decode")

    def fn_c():
        with use_backend("torch"):
            common.pdiff_decode_unflatten(dec_c, s, zl)
    ctx.measure("decode", "torch.compile", fn_c, work=work, reps=10 if ctx.gpu else 3)
    return "done"


def _mnist1d_test_set():
    """The MNIST-1D test split (1000 x (1, 40)) from the carried cache, or None."""
    try:
        from pdiff_fast import mnist1d

        d = mnist1d()
        return d.x_test, d.y_test
    except Exception:  # noqa: BLE001 - no cache and no mnist1d package: random inputs instead
        return None


def phase_population(ctx: Ctx) -> str:
    from benchmarks import test_population

    n = ctx.sizes.pop_n
    base, spec, flat, x, y = test_population.population(n)
    real = _mnist1d_test_set()
    if real is not None and real[0].shape == x.shape:
        x, y = real
    data = "MNIST-1D test set" if real is not None and real[0].shape == x.shape and x is real[0] else "random inputs"
    args = test_population._to((base, spec, flat, x, y), ctx.device)
    test_population.warm_allocator()
    work = test_population.work(args[0], args[1], args[3], n)
    note = f"{n} CNNs (D = {spec.dim}, last 2 BN), {x.shape[0]} samples of the {data}"
    ctx.measure("population", "auto (batched)", lambda: test_population.PEERS["auto"](*args), work=work,
                reps=3, note=note)
    ctx.measure("population", "one-by-one loop", lambda: test_population.PEERS["reference"](*args), work=work,
                reps=3 if ctx.gpu else 1, note=note)
    return data


def phase_train(ctx: Ctx) -> str:
    import copy

    from pdiff_fast import EMA, DDPMScheduler, use_backend
    from benchmarks import common

    s, z = ctx.s, ctx.sizes
    params, latents = s.params(z.train_k), s.latents(z.train_k)
    for target, stage in (("train_ae", "ae_train"), ("train_den", "den_train")):
        work = s.work(stage, z.train_k, z.train_steps)
        for peer, backend_name in (("auto", "auto"), ("torch eager", "torch")):
            if target == "train_ae":
                ae = copy.deepcopy(s.ae)

                def fn(ae=ae, backend_name=backend_name):
                    with use_backend(backend_name):
                        common.fit_autoencoder(ae, params, steps=z.train_steps, progress=False)
            else:
                model = EMA(copy.deepcopy(s.den))

                def fn(model=model, backend_name=backend_name):
                    with use_backend(backend_name):
                        common.fit_diffusion(model, latents, DDPMScheduler(), steps=z.train_steps, progress=False)
            ctx.measure(target, peer, fn, work=work, reps=3,
                        note=f"{z.train_steps} AdamW steps, K = {z.train_k}")
    return "done"


def phase_profile(ctx: Ctx) -> str:
    from pdiff_fast import use_backend
    from benchmarks import common, profile_gpu

    s = ctx.s
    sched, _ = common.make_scheduler("ddpm", 1)
    profile_gpu.TOP = TOP
    with use_backend("auto"):
        wall, table, total = profile_gpu._profiled(lambda: common.pdiff_sample(s.den, sched, ctx.sizes.n, s), ctx.device)
    head = ("GPU run" if ctx.gpu else "REHEARSAL on a CPU (CPU ops, not GPU kernels)")
    text = (f"# one DDPM sampling step, N = {ctx.sizes.n}, auto backend uncaptured, {ctx.st.d['info'].get('device')}"
            f" ({head})\n# wall {wall * 1e3:.2f} ms, self time summed {total:.2f} ms; top {TOP} by self "
            f"{'CUDA' if ctx.gpu else 'CPU'} time\n\n{table}\n")
    _atomic_write(ctx.st.out / "profile.txt", text)
    return f"wall {wall * 1e3:.1f} ms"


# (name, function, most seconds, least seconds worth starting it with); the least of the later
# phases is kept free when a phase's time box is set
PHASES = (
    ("setup", phase_setup, 40, 5),
    ("spot", phase_spot, 45, 8),
    ("cold_pdiff", phase_cold_pdiff, 60, 10),
    ("cold_compile", phase_cold_compile, 75, 10),
    ("sample_step", phase_sample_step, 60, 25),
    ("e2e", phase_e2e, 30, 10),
    ("decode", phase_decode, 20, 5),
    ("population", phase_population, 25, 8),
    ("train", phase_train, 25, 6),
    ("profile", phase_profile, 15, 3),
)


def _on_alarm(signum, frame):
    raise PhaseTimeout()


def _on_term(signum, frame):
    raise Killed(signum)


def _note(exc: BaseException) -> str:
    text = str(exc).strip()
    where = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
    at = f" at {Path(where[0].filename).name}:{where[0].lineno}" if where else ""
    return f"{type(exc).__name__}{at}: {text.splitlines()[0][:160] if text else ''}"


def cmd_run(args) -> int:
    out = Path(args.out)
    st = State.load(out)
    signal.signal(signal.SIGTERM, _on_term)
    signal.signal(signal.SIGINT, _on_term)
    signal.signal(signal.SIGALRM, _on_alarm)
    if os.environ.get("PDIFF_HEADLINE_REHEARSAL") == "1":
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton's import: the spot checks' Triton
    import torch

    gpu = torch.cuda.is_available() and os.environ.get("PDIFF_HEADLINE_REHEARSAL") != "1"
    st.d["mode"] = "gpu" if gpu else "rehearsal"
    try:
        import triton
        tv = triton.__version__
    except Exception:  # noqa: BLE001
        tv = None
    st.d["info"].update(torch=torch.__version__, triton=tv,
                        device=(f"cuda ({torch.cuda.get_device_name(0)})" if gpu else "cpu (rehearsal)"))
    if not gpu and torch.cuda.is_available() is False and os.environ.get("PDIFF_HEADLINE_REHEARSAL") == "0":
        st.d["info"]["warning"] = "a GPU run was asked for, but torch sees no CUDA device: rehearsal figures"
    st.save()
    ctx = Ctx(st, args)
    skip = set(os.environ.get("PDIFF_HEADLINE_SKIP", "").split())
    mins = [0 if name in skip else m for name, *_, m in PHASES]
    rc = 0
    try:
        for i, (name, fn, most, least) in enumerate(PHASES):
            left = args.deadline - time.time() - sum(mins[i + 1:])
            budget = int(min(most, left))
            if name in skip:
                st.phase(name, status="skipped", seconds=0, budget=most, note="PDIFF_HEADLINE_SKIP")
                st.save()
                continue
            if budget < least or (ctx.s is None and name != "setup"):
                why = "no time left" if budget < least else "setup failed"
                st.phase(name, status="skipped", seconds=0, budget=most, note=why)
                st.save()
                continue
            entry = st.phase(name, status="running", seconds="", budget=budget, note="")
            st.save()
            t0 = time.time()
            signal.setitimer(signal.ITIMER_REAL, budget)
            try:
                note = fn(ctx, budget) if name.startswith("cold") else fn(ctx)
                entry.update(status="ok", note=note)
            except PhaseTimeout:
                entry.update(status="TIMEOUT", note=f"cut at its {budget} s box; the rows above are what it measured")
            except Exception as exc:  # noqa: BLE001 - the next phases still run
                entry.update(status="FAILED", note=_note(exc))
                traceback.print_exc()
                rc = rc or 1
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
                entry["seconds"] = round(time.time() - t0, 1)
                st.save()
            if ctx.gpu and entry["status"] != "ok":
                with contextlib.suppress(Exception):  # a cut phase may leave work queued
                    torch.cuda.synchronize()
                    torch.cuda.empty_cache()
            print(f"== {name}: {entry['status']} in {entry['seconds']} s: {entry['note']}", flush=True)
    except Killed as k:
        for p in st.d["phases"]:
            if p.get("status") == "running":
                p.update(status="KILLED", note=f"signal {k.args[0]} while running")
        st.save()
        print("gpu_headline: killed; summary.md is current", flush=True)
        return 143
    return rc


# --- subcommands the shell and the cold starts use --------------------------------------------------

def cmd_cold(args) -> int:
    """One cold start: process start (about) to the first N models, with the caches this process
    was given (empty). Writes its timings as JSON."""
    t0 = time.perf_counter()
    import torch
    from pdiff_fast import DDPMScheduler, generate, use_backend
    from benchmarks import common

    empty = all(not any(Path(os.environ[v]).iterdir()) for v in ("TRITON_CACHE_DIR", "TORCHINDUCTOR_CACHE_DIR")
                if os.environ.get(v) and Path(os.environ[v]).is_dir())
    t_import = time.perf_counter() - t0
    device = common.default_device()
    if os.environ.get("PDIFF_HEADLINE_REHEARSAL") == "1":
        device = torch.device("cpu")
        torch.set_num_threads(1)
    t1 = time.perf_counter()
    s = common.Setup(common.configs(True)["resnet18"], device)
    sched = common.make_scheduler("ddpm", args.steps)[0] if args.steps else DDPMScheduler()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    t_setup = time.perf_counter() - t1
    backend = os.environ.get("PDIFF_HEADLINE_COMPILE_BACKEND", "inductor")
    if args.peer == "pdiff":
        def models():
            return s.spec.unflatten_stacked(generate(s.ae, s.den, sched, n=args.n, progress=False))
    else:
        den_c, dec_c = torch.compile(s.den, backend=backend), torch.compile(s.ae.decode, backend=backend)

        def models():
            with use_backend("torch"):
                return common.pdiff_decode_unflatten(dec_c, s, common.pdiff_sample(den_c, sched, args.n, s, seed=0))
    times = []
    for _ in range(2):  # the second call: the same work warm, so the one-time cost shows
        t2 = time.perf_counter()
        models()
        sync()
        times.append(time.perf_counter() - t2)
    Path(args.json).write_text(json.dumps({
        "peer": args.peer, "n": args.n, "steps": len(sched.timesteps()), "import_s": t_import, "setup_s": t_setup,
        "first_models_s": times[0], "warm_models_s": times[1], "caches_empty": empty, "device": common.device_name(device)}))
    return 0


def cmd_record(args) -> int:
    st = State.load(Path(args.out))
    st.d.setdefault("mode", "rehearsal" if os.environ.get("PDIFF_HEADLINE_REHEARSAL") == "1" else "gpu")
    for k in ("commit", "started_utc"):
        if getattr(args, k, None):
            st.d[k] = getattr(args, k)
    if args.name:
        status = {"0": "ok", "124": "TIMEOUT", "137": "KILLED", "143": "KILLED", "skip": "skipped",
                  "running": "running"}.get(args.rc, f"rc {args.rc}")
        old = next((p for p in st.d["phases"] if p["name"] == args.name), {})
        fields = {k: getattr(args, k) if getattr(args, k) != "" else old.get(k, "") for k in ("seconds", "budget", "note")}
        st.phase(args.name, status=status, **fields)
    st.save()
    return 0


def cmd_table(args) -> int:
    print(final_table(State.load(Path(args.out)).d))
    return 0


def cmd_memcheck(args) -> int:
    import torch

    device = torch.device("cuda" if torch.cuda.is_available() and os.environ.get("PDIFF_HEADLINE_REHEARSAL") != "1"
                          else "cpu")
    ok = memcheck_workload(device)
    how = "uncaptured, no caching allocator" if os.environ.get("PYTORCH_NO_CUDA_MEMORY_CACHING") == "1" else "defaults"
    print(f"memcheck workload (generate {how} + decode + unflatten + evaluate) on {device}: "
          f"{'finite results' if ok else 'NON-FINITE results'}")
    return 0 if ok else 1


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("run")
    p.add_argument("out")
    p.add_argument("--deadline", type=float, required=True, help="epoch seconds by which every phase has ended")
    p.add_argument("--scratch", required=True, help="folder for the cold runs' caches (outside OUT)")
    p = sub.add_parser("cold")
    p.add_argument("out")
    p.add_argument("--peer", choices=("pdiff", "compile"), required=True)
    p.add_argument("--json", required=True)
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--steps", type=int, default=None, help="reverse steps (default: all 1000)")
    p = sub.add_parser("record")
    p.add_argument("out")
    p.add_argument("name", nargs="?", default="")
    p.add_argument("rc", nargs="?", default="0")
    p.add_argument("seconds", nargs="?", default="")
    p.add_argument("budget", nargs="?", default="")
    p.add_argument("note", nargs="?", default="")
    p.add_argument("--commit")
    p.add_argument("--started-utc", dest="started_utc")
    p = sub.add_parser("table")
    p.add_argument("out")
    sub.add_parser("memcheck")
    args = ap.parse_args(argv)
    return {"run": cmd_run, "cold": cmd_cold, "record": cmd_record, "table": cmd_table, "memcheck": cmd_memcheck}[args.cmd](args)


if __name__ == "__main__":
    raise SystemExit(main())
