"""Scaling of generation with N (models) and with D (parameters per model): time and peak memory,
for pdiff_fast (automatic backend) and the reference loop, plotted to PNG.

    python -m benchmarks.scaling --out benchmarks/results/          # or: python benchmarks/scaling.py ...
    python -m benchmarks.scaling --full                             # larger N and D (for a GPU)

Generating N models = the first `--steps` reverse DDPM steps (default 4 of 1000; nothing is
extrapolated), decoding and unflattening. pdiff_fast: `generate()` (chunks, noise on the device)
then `ParamSpec.unflatten_stacked`; reference: one batch with host noise and per-step host copies,
one decode batch, then one model at a time (benchmarks/reference_loop.py).

Against N: the resnet18 configuration (D = 2048, medium autoencoder, denoiser [64..512]),
N = 1, 10, 100, 200 (and 1000 with --full). Against D: whole cnn1d networks at widths
(w, 2w, 4w), every parameter, small autoencoder, the whole-net denoiser of the suite, N = 4
(10 with --full), w = 8, 16, 32, 64 (and 128 with --full), i.e. D from about 2.7k to 127k (500k).

Peak memory: on CUDA, torch.cuda.max_memory_allocated() over the call minus memory_allocated()
before it. On CPU, the peak resident set over the call (VmHWM of /proc/self/status, reset through
/proc/self/clear_refs just before it) minus the resident set before it; glibc's malloc_trim(0)
runs first, so memory the warm-up call freed but glibc kept does not hide the call's peak.
tracemalloc is not used: it does not see torch's allocations. Time: the fastest of 2-5 calls per
peer, the peers' calls alternating.

Writes scaling_<dev>.json, scaling_<dev>.md, scaling_N_<dev>.png and scaling_D_<dev>.png.
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import json
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a file: make `benchmarks` and `pdiff_fast` importable
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

# InstanceNorm1d(num_features=length) on (B, C, L) warns at every call (as in the reference); pytest.ini
# silences it for the suite, this does for the script
warnings.filterwarnings("ignore", message="input's size at dim=1 does not match num_features")

from benchmarks import common  # noqa: E402
from benchmarks import reference_loop as ref  # noqa: E402
from pdiff_fast import generate, use_backend  # noqa: E402



def _malloc_trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the RSS delta may then understate the peak
        pass


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def _peak_memory(fn, device: torch.device, sync) -> int:
    """Bytes the call adds at its peak (see the module docstring for how, per device)."""
    if device.type == "cuda":
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        sync()
        return max(0, torch.cuda.max_memory_allocated(device) - before)
    gc.collect()
    _malloc_trim()
    before = _status("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current resident set
    fn()
    return max(0, _status("VmHWM") - before)


def measure(fns: dict, device: torch.device, budget_s: float, max_repeats: int = 5) -> dict:
    """Per peer: a warm-up call and a call for the peak memory; then timed calls that alternate between
    the peers (so a burst of load from other processes hits all of them) until the budget is spent,
    at least 2 per peer. The time is each peer's fastest call, the one least disturbed."""
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    out, times = {}, {}
    for peer, fn in fns.items():
        try:
            fn()
            sync()
            out[peer] = {"peak_bytes": _peak_memory(fn, device, sync)}
            times[peer] = []
        except Exception as exc:  # noqa: BLE001 - an out-of-memory point is a result, not a crash
            if cuda:
                torch.cuda.empty_cache()
            if "out of memory" not in str(exc).lower():
                raise
            out[peer] = {"error": "out of memory"}
    spent = 0.0
    while times and (min(len(t) for t in times.values()) < 2 or
                     (spent < budget_s and max(len(t) for t in times.values()) < max_repeats)):
        for peer, t in times.items():
            t0 = time.perf_counter()
            fns[peer]()
            sync()
            t.append(time.perf_counter() - t0)
            spent += t[-1]
    for peer, t in times.items():
        out[peer].update(time_s=min(t), repeats=len(t))
    return out


def generators(s: common.Setup, n: int, steps: int) -> dict:
    """peer -> a call that generates n models of setup s (sampling `steps` steps, decode, unflatten)."""
    scheduler, _ = common.make_scheduler("ddpm", steps)
    timesteps = scheduler.timesteps()

    def pdiff():
        with use_backend("auto"):
            flat = generate(s.ae, s.den, scheduler, n, device=s.device, seed=0, progress=False)
            s.spec.unflatten_stacked(flat)

    model, ae, diffusion = s.ref_denoiser(), s.ref_autoencoder(), ref.Diffusion(s.device)

    def reference():
        z = diffusion.sample(model, (n, 1, s.latent_numel), timesteps, s.device)
        ref.decode_and_unflatten(ae, z, s.latent_shape, s.net, s.names)

    return {"auto": pdiff, "reference": reference}


def run(args) -> dict:
    device = common.default_device()
    cfgs = common.configs(args.full)
    points = []
    ns = (1, 10, 100, 200, 1000) if args.full else (1, 10, 100, 200)
    s = common.Setup(cfgs["resnet18"], device)
    for n in ns:
        for peer, r in measure(generators(s, n, args.steps), device, args.budget).items():
            points.append({"axis": "N", "N": n, "D": s.D, "peer": peer, **r})
            print(f"N={n:5d} D={s.D:7d} {peer:10s} {r}", flush=True)
    widths = (8, 16, 32, 64, 128) if args.full else (8, 16, 32, 64)
    n_d = 10 if args.full else 4
    whole = cfgs["whole-net"]
    for w in widths:
        cfg = common.BenchConfig(f"cnn1d-{w}", whole.preset, whole.denoiser_channels, (w, 2 * w, 4 * w))
        s = common.Setup(cfg, device)
        for peer, r in measure(generators(s, n_d, args.steps), device, args.budget).items():
            points.append({"axis": "D", "N": n_d, "D": s.D, "width": w, "peer": peer, **r})
            print(f"N={n_d:5d} D={s.D:7d} {peer:10s} {r}", flush=True)
    env = {"device": common.device_name(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
           "steps": args.steps, "memory": "cuda.max_memory_allocated delta" if device.type == "cuda" else
           "peak RSS delta (VmHWM after malloc_trim + clear_refs)",
           "resnet18": {"D": 2048, "denoiser_channels": list(cfgs["resnet18"].denoiser_channels)},
           "whole_net": {"N": n_d, "denoiser_channels": list(whole.denoiser_channels)}}
    return {"environment": env, "points": points}


def _mib(b) -> float:
    return b / 2**20


def plot(result: dict, out: Path, tag: str) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    env = result["environment"]
    files = []
    for axis, xlabel in (("N", "models generated (N)"), ("D", "parameters per model (D)")):
        pts = [p for p in result["points"] if p["axis"] == axis and "time_s" in p]
        fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(10, 4))
        for peer, style in (("auto", "o-"), ("reference", "s--")):
            mine = sorted((p for p in pts if p["peer"] == peer), key=lambda p: p[axis])
            xs = [p[axis] for p in mine]
            ax_t.plot(xs, [p["time_s"] for p in mine], style, label=common.PEER_NAMES[peer])
            ax_m.plot(xs, [max(_mib(p["peak_bytes"]), 1e-2) for p in mine], style, label=common.PEER_NAMES[peer])
        fixed = f"D = {env['resnet18']['D']}" if axis == "N" else f"N = {env['whole_net']['N']}"
        for ax, ylabel in ((ax_t, "time per call (s)"), (ax_m, "peak memory (MiB)")):
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend()
        ax_m.set_title(env["memory"], fontsize=8)
        fig.suptitle(f"generate ({env['steps']} DDPM steps + decode + unflatten), {fixed}, {env['device']}, "
                     f"{env['threads']} thread(s)", fontsize=10)
        fig.tight_layout()
        path = out / f"scaling_{axis}_{tag}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        files.append(path)
    return files


def markdown(result: dict) -> str:
    env = result["environment"]
    lines = [f"# Scaling of generation: {env['device']}", "",
             f"Generating N models: {env['steps']} DDPM steps (of 1000; not extrapolated), decode, unflatten. "
             f"torch {env['torch']}, {env['threads']} thread(s). Peak memory: {env['memory']}.", "",
             "| axis | N | D | peer | time | time / model | peak memory |", "|---|---:|---:|---|---:|---:|---:|"]
    for p in result["points"]:
        if "time_s" not in p:
            lines.append(f"| {p['axis']} | {p['N']} | {p['D']} | {p['peer']} | {p['error']} | | |")
            continue
        lines.append(f"| {p['axis']} | {p['N']} | {p['D']} | {common.PEER_NAMES[p['peer']]} | {p['time_s']:.4g} s | "
                     f"{p['time_s'] / p['N'] * 1e3:.3g} ms | {_mib(p['peak_bytes']):.1f} MiB |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="time and peak memory of generation against N and D")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="folder for JSON, md and PNGs")
    parser.add_argument("--full", action="store_true", help="larger N and D (meant for a GPU)")
    parser.add_argument("--steps", type=int, default=None, help="DDPM steps per call (default 4; 1000 with --full)")
    parser.add_argument("--budget", type=float, default=2.0, help="seconds of timed calls per point, all peers")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default 1 without a GPU)")
    args = parser.parse_args(argv)
    args.steps = args.steps or (1000 if args.full else 4)
    threads = args.threads if args.threads is not None else (0 if torch.cuda.is_available() else 1)
    if threads > 0:
        torch.set_num_threads(threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = "cuda" if torch.cuda.is_available() else "cpu"
    result = run(args)
    (out / f"scaling_{tag}.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / f"scaling_{tag}.md").write_text(markdown(result))
    for path in plot(result, out, tag):
        print("wrote", path)
    print("wrote", out / f"scaling_{tag}.json", "and", out / f"scaling_{tag}.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
