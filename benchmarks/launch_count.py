"""Kernel launches and host time per DDPM sampling step, counted on the CPU (issue 23, part 3 and
item 4: N = 1000 ran as 4 chunks on the H100, 33 launches each per step, and the launchers made
host calls to triton.cdiv / next_power_of_2 that cost 6-7 us each in Triton 3.6).

    python -m benchmarks.launch_count              # writes benchmarks/results/launch_count_{cpu,cuda}.{md,json}
    python -m benchmarks.launch_count --no-write   # print only

The workload is the headline one: the resnet18 configuration's denoiser (latent (4, 3) = 12, the
reference widths [64, 128, 256, 512]) sampling N = 1000 models with the Triton DDPM step, as
generate() runs one step of the CUDA path (`sample.denoise_step`, the body of the captured loop,
with the seed and row offset as device tensors). 'before' is the chunk plan generate() used on
CUDA before (one 1 GiB budget for both networks: 4 chunks of 256 rows, grain 256); 'after' the
current CUDA plan (`sample.plan_chunks` with an H100's free memory: one chunk, grain 1024).

How it counts (`count_launches`): Triton's JITFunction.run (InterpretedFunction.run under
TRITON_INTERPRET=1) is wrapped, so every kernel launch is counted by kernel name; with dry=True
the wrapper returns without running the kernel, so the launchers and the torch glue run at full
size on the CPU in milliseconds, and the time of a step is the host time of pdiff_fast's side of
it (the launchers' arithmetic, argument checks, buffer allocation, the torch ops between the
kernels), not of Triton's own launch path (its argument binding and cache lookup, also host work
on a GPU, is what the wrapper skips). Torch ops that would launch a kernel on a GPU (aten ops
other than views and allocations) are counted too, and the host calls to triton.cdiv /
triton.next_power_of_2 (launch.cdiv / next_pow2 replace them). Launchers pick tiles and splits
as on a 132-SM H100 (launch.target_programs / stream_tile patched), which is what the counts
depend on. Dry counts equal real interpreted counts (tests/test_sample.py checks at a small size).
No time here is a GPU time.
"""
from __future__ import annotations

import os

if os.environ.get("TRITON_INTERPRET") is None:
    import torch as _torch

    if not _torch.cuda.is_available():  # Triton kernels take CPU tensors only in its interpreter
        os.environ["TRITON_INTERPRET"] = "1"

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
import triton  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes  # noqa: E402

from pdiff_fast import AE_CNN_bottleneck, DDPMScheduler, use_backend  # noqa: E402
from pdiff_fast.kernels import launch  # noqa: E402
from pdiff_fast.diffusion.sample import ChunkPlan, chunk_size_for, denoise_step, plan_chunks  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
H100_SMS = 132
N_MODELS, LATENT, D = 1000, (4, 3), 2048  # the resnet18 configuration (benchmarks/common.py)
WIDTHS = [64, 128, 256, 512]
DEVICE_FREE_BYTES = 78 << 30  # an H100's free memory, for the 'after' plan


def _run_classes():
    """The Triton classes whose .run launches a kernel: compiled and interpreted."""
    from triton.runtime.jit import JITFunction

    classes = [JITFunction]
    with contextlib.suppress(ImportError):
        from triton.runtime.interpreter import InterpretedFunction
        classes.append(InterpretedFunction)
    return classes


@contextlib.contextmanager
def count_launches(dry: bool = False):
    """Counter of Triton kernel launches by kernel name inside the block (plus the host calls to
    triton.cdiv / triton.next_power_of_2 under "triton.cdiv" / "triton.next_power_of_2");
    dry=True skips running the kernels."""
    counts: Counter = Counter()
    originals = {cls: cls.run for cls in _run_classes()}

    def wrap(cls):
        def run(self, *args, **kwargs):
            counts[self.fn.__name__] += 1
            if dry:
                return None
            with _disable_current_modes():  # the interpreter's own copies are not the step's torch ops
                return originals[cls](self, *args, **kwargs)
        return run

    helpers = {name: getattr(triton, name) for name in ("cdiv", "next_power_of_2")}

    def counted(name):
        def call(*args, **kwargs):
            counts[f"triton.{name}"] += 1
            return helpers[name](*args, **kwargs)
        return call

    try:
        for cls in originals:
            cls.run = wrap(cls)
        for name in helpers:
            setattr(triton, name, counted(name))
        yield counts
    finally:
        for cls, run in originals.items():
            cls.run = run
        for name, fn in helpers.items():
            setattr(triton, name, fn)


_NO_KERNEL = {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "lift_fresh", "detach",
              "alias"}  # allocations and aliases: no kernel


class TorchOps(TorchDispatchMode):
    """Counts the aten ops that would launch a kernel on a GPU: not views, not allocations."""

    def __init__(self):
        super().__init__()
        self.counts: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if not (func.is_view or name in _NO_KERNEL):
            self.counts[f"aten.{name}"] += 1
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def as_h100():
    """Launchers pick tiles and splits as on a CUDA device with H100_SMS SMs (CPU tensors)."""
    saved = launch.target_programs, launch.stream_tile, getattr(launch, "COMPILE_ONLY_SMS", None)
    launch.target_programs = lambda device: 4 * H100_SMS
    launch.stream_tile = lambda device, gpu, interpreted: gpu
    if hasattr(launch, "COMPILE_ONLY_SMS"):  # launch.on_gpu / sm_count: the compiled-code report's switch
        launch.COMPILE_ONLY_SMS = H100_SMS
    try:
        yield
    finally:
        launch.target_programs, launch.stream_tile = saved[:2]
        if hasattr(launch, "COMPILE_ONLY_SMS"):
            launch.COMPILE_ONLY_SMS = saved[2]


def step_workload(widths=WIDTHS, latent=LATENT, device="cpu"):
    """(denoiser, scheduler, seed tensor, row-offset tensor) of the counted step."""
    torch.manual_seed(0)
    numel = latent[0] * latent[1]
    den = AE_CNN_bottleneck(numel, 1, channel_list=list(widths)).to(device).eval()
    seed = torch.zeros(1, dtype=torch.int64, device=device)
    row_offset = torch.zeros(1, dtype=torch.int64, device=device)
    return den, DDPMScheduler(), seed, row_offset


@torch.no_grad()
def count_step(plan: ChunkPlan, n: int, dry: bool = True, widths=WIDTHS, latent=LATENT, device="cpu",
               repeats: int = 20) -> dict:
    """One DDPM step of all n models, chunk by chunk as `plan` splits them: Triton launches, torch
    ops and the host time (median of `repeats`, after one warm-up step), in one dict."""
    den, scheduler, seed, row_offset = step_workload(widths, latent, device)
    chunks = [min(plan.chunk, n - s) for s in range(0, n, plan.chunk)]
    xs = [torch.zeros((m, *latent), device=device) for m in chunks]
    tts = [torch.full((m,), 999, dtype=torch.long, device=device) for m in chunks]

    def step():
        for x, tt in zip(xs, tts):
            denoise_step(den, scheduler, x, 999, tt, 0, plan.grain, seed=seed, row_offset=row_offset)

    with use_backend("triton"), count_launches(dry) as launches:
        step()  # warm-up: tables on the device, imports, first-call caches
        launches.clear()
        ops = TorchOps()
        with ops:
            step()
        times = []
        for _ in range(repeats):
            if seed.is_cuda:
                torch.cuda.synchronize()  # an empty queue: the host time is not a wait on the GPU
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
    kernels = {k: v for k, v in launches.items() if not k.startswith("triton.")}
    per_call = {k: v // (repeats + 1) for k, v in launches.items()}
    return {"chunks": len(chunks), "chunk_rows": chunks, "grain": plan.grain,
            "launches": sum(kernels.values()) // (repeats + 1),
            "launches_by_kernel": {k: v // (repeats + 1) for k, v in sorted(kernels.items())},
            "torch_ops": sum(ops.counts.values()), "torch_ops_by_op": dict(ops.counts.most_common()),
            "triton_helper_calls": sum(v for k, v in per_call.items() if k.startswith("triton.")),
            "host_ms_per_step": 1e3 * statistics.median(times), "dry": dry}


def helper_cost_us(reps: int = 20000) -> dict:
    """Host cost of one call: triton.cdiv / next_power_of_2 against launch.cdiv / next_pow2."""
    def us(fn):
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        return 1e6 * (time.perf_counter() - t0) / reps
    return {"triton.cdiv": us(lambda: triton.cdiv(1000, 64)), "launch.cdiv": us(lambda: launch.cdiv(1000, 64)),
            "triton.next_power_of_2": us(lambda: triton.next_power_of_2(1000)),
            "launch.next_pow2": us(lambda: launch.next_pow2(1000))}


def plans(device: torch.device, n: int = N_MODELS) -> dict[str, ChunkPlan]:
    """'before' and 'after' chunk plans for n models on CUDA (with the device's free memory on
    one, else DEVICE_FREE_BYTES)."""
    numel = LATENT[0] * LATENT[1]
    before_chunk = chunk_size_for(numel, D, 1 << 30)  # the one budget generate() used on CUDA before
    free = None if device.type == "cuda" else DEVICE_FREE_BYTES
    return {"before": ChunkPlan(before_chunk, min(1024, before_chunk), min(1024, before_chunk)),
            "after": plan_chunks(n, numel, D, torch.device("cuda"), 1 << 30, free_bytes=free)}


def measure(device=None) -> dict:
    """The counts on `device` (default: CUDA when present): on CUDA the kernels run and the host time
    includes Triton's launch path; on the CPU, dry launches as on an H100 (see the docstring)."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cuda = device.type == "cuda"
    with contextlib.nullcontext() if cuda else as_h100():
        rows = {name: count_step(plan, N_MODELS, dry=not cuda, device=device) for name, plan in plans(device).items()}
    name = (f"{torch.cuda.get_device_name(device)}, compiled Triton" if cuda
            else f"CPU, interpreter ({platform.machine()}, dry launches; no GPU was used)")
    return {"device": name, "device_type": device.type, "torch": torch.__version__,
            "triton": triton.__version__, "threads": torch.get_num_threads(), "N": N_MODELS,
            "latent": list(LATENT), "denoiser_channels": WIDTHS, "plans": rows, "helper_cost_us": helper_cost_us(),
            "date": time.strftime("%Y-%m-%d")}


def table(r: dict) -> str:
    lines = ["| plan | chunks x rows | grain | Triton launches / step | torch ops / step | "
             "triton.cdiv + next_power_of_2 host calls / step | host ms / step |", "|---|---|---:|---:|---:|---:|---:|"]
    for name, p in r["plans"].items():
        lines.append(f"| {name} | {p['chunks']} x {p['chunk_rows'][0]} | {p['grain']} | {p['launches']} | "
                     f"{p['torch_ops']} | {p['triton_helper_calls']} | {p['host_ms_per_step']:.2f} |")
    return "\n".join(lines)


HOW = {"cpu": "The launchers choose tiles as on a 132-SM H100 and the kernels are not run (dry launches, "
               "see the script's docstring); the host time is pdiff_fast's side of a step on this CPU "
               "(launchers and torch glue) without Triton's own launch path. No number here is a GPU time.",
        "cuda": "The kernels run; the host time is the wall time of issuing one step (launches are "
                "asynchronous), Triton's launch path included."}


def markdown(r: dict) -> str:
    after, before = r["plans"]["after"], r["plans"]["before"]
    c = r["helper_cost_us"]
    kernels = ", ".join(f"{k} {v}" for k, v in after["launches_by_kernel"].items())
    ops = ", ".join(f"{k} {v}" for k, v in after["torch_ops_by_op"].items())
    return f"""# Sampling: launches and host time per DDPM step ({r['device']})

Counted with `python -m benchmarks.launch_count` (torch {r['torch']}, Triton {r['triton']}, {r['threads']} torch
thread(s), {r['date']}): one DDPM step of N = {r['N']} models of the resnet18 configuration (latent
{r['latent']}, denoiser {r['denoiser_channels']}) on the CUDA path's code (`sample.denoise_step`, the body of
the captured loop). {HOW[r['device_type']]} 'before': the chunk plan generate() used on CUDA before
(one 1 GiB budget for sampling and decoding), run with today's launchers; 'after': the current CUDA
plan (`plan_chunks`).

{table(r)}

With the CUDA graph (on by default on CUDA since this change) the host issues one replay for the
whole 1000-step loop instead of these launches; the kernels inside the graph are the 'after' launches.

After, by kernel: {kernels}. Torch ops: {ops}.

Host cost of one call on this CPU (Triton {r['triton']}; the issue measured 6-7 us for Triton 3.6's on the
GPU machine): triton.cdiv {c['triton.cdiv']:.2f} us, launch.cdiv {c['launch.cdiv']:.2f} us,
triton.next_power_of_2 {c['triton.next_power_of_2']:.2f} us, launch.next_pow2 {c['launch.next_pow2']:.2f} us.
Host calls of triton.cdiv / next_power_of_2 left per step: {after['triton_helper_calls']} after,
{before['triton_helper_calls']} before (the launchers use launch.cdiv / next_pow2).
"""


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-write", action="store_true", help="print only")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)  # a shared 2-core machine: one thread keeps host timings steady
    r = measure()
    print(table(r))
    if not args.no_write:
        args.out.mkdir(parents=True, exist_ok=True)
        stem = f"launch_count_{r['device_type']}"
        (args.out / f"{stem}.json").write_text(json.dumps(r, indent=2) + "\n")
        (args.out / f"{stem}.md").write_text(markdown(r))
    return r


if __name__ == "__main__":
    main()
