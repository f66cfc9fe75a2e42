"""Sampling and evaluation throughput against the number of processes (torchrun, one machine).

    python -m benchmarks.world_size --out benchmarks/results/             # worlds 1 and 2
    python -m benchmarks.world_size --worlds 1,2,4,8 --threads 1          # a multi-GPU machine

Each world size is one `torchrun --standalone --nproc_per_node=W -m benchmarks.world_size --worker`
job. Its ranks build the same models (seeded), then time, fastest of `--repeats`:
- sampling: `generate(shard=True)` of N models (the `small` autoencoder on D = 384, the CPU
  denoiser widths [16, 32, 64, 128], DDIM with `--ddim-steps` steps, grain 32), the ranks splitting the
  models in whole grains and gathering them;
- evaluation: `evaluate_rows(shard=True)` of N parameter sets of the default MNIST-1D CNN's last two
  BatchNorm layers on 1000 test inputs (shaped as MNIST-1D, random values), split and gathered.
Each rank uses `--threads` torch threads (default: the machine's cores divided by W, so every
world size uses the same cores; world 1 is also timed with one thread, the per-process
baseline). The result of every world size is checked to equal world 1's (bitwise).

Writes world_size_<dev>.json and world_size_<dev>.md: seconds, models per second and speed-up
over world 1.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _timed(fn, repeats: int):
    from pdiff_fast import distributed

    best, out = float("inf"), None
    for _ in range(repeats):
        distributed.barrier()
        start = time.perf_counter()
        out = fn()
        distributed.barrier()
        best = min(best, time.perf_counter() - start)
    return best, out


def worker(args) -> None:
    import torch

    from pdiff_fast import distributed
    from pdiff_fast.nn.autoencoder import small
    from pdiff_fast.nn.denoiser import AE_CNN_bottleneck
    from pdiff_fast.diffusion.schedulers import DDIMScheduler
    from pdiff_fast.evaluation.judge import evaluate_rows
    from pdiff_fast.nn.models import build_model
    from pdiff_fast.params import ParamSpec
    from pdiff_fast.diffusion.sample import generate

    torch.set_num_threads(args.threads)
    device = distributed.init(torch.device(args.device))
    torch.manual_seed(0)
    ae = small(384).to(device).eval()
    den = AE_CNN_bottleneck(int(torch.Size(ae.latent_shape()).numel()), 1, channel_list=[16, 32, 64, 128])
    den = den.to(device).eval()
    sched = DDIMScheduler(args.steps)
    t_sample, flat = _timed(lambda: generate(ae, den, sched, args.n, device=device, seed=0, grain=32,
                                             progress=False, shard=True), args.repeats)
    net = build_model("cnn1d", (1, 40), 10).to(device).eval()
    spec = ParamSpec.from_model(net, "last-2-norm-layers")
    x, y = torch.randn(1000, 1, 40, device=device), torch.randint(0, 10, (1000,), device=device)
    rows = spec.flatten([net])[0].to(device) + 0.05 * torch.randn(args.n, spec.dim, device=device)
    t_eval, res = _timed(lambda: evaluate_rows(net, spec, rows, x, y, 1 << 30, shard=True), args.repeats)
    if distributed.is_main():
        from safetensors.torch import save_file

        save_file({"flat": flat.cpu().contiguous(), "accuracy": res.accuracy.cpu().contiguous()},
                  args.result + ".safetensors")
        Path(args.result + ".json").write_text(json.dumps({"sample_s": t_sample, "evaluate_s": t_eval}))


def run_world(world: int, threads: int, args, tmp: Path) -> dict:
    result = str(tmp / f"w{world}t{threads}")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world}",
           "-m", "benchmarks.world_size", "--worker", "--threads", str(threads), "--models", str(args.n),
           "--ddim-steps", str(args.steps), "--repeats", str(args.repeats), "--device", args.device, "--result", result]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"world {world}: torchrun failed\n{proc.stderr[-3000:]}")
    return {"world": world, "threads": threads, **json.loads(Path(result + ".json").read_text()),
            "tensors": result + ".safetensors"}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worlds", default="1,2")
    p.add_argument("--threads", type=int, help="torch threads per rank (default: cores // world)")
    p.add_argument("--models", dest="n", type=int, default=512, help="models sampled and evaluated")
    p.add_argument("--ddim-steps", dest="steps", type=int, default=50, help="DDIM steps")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker(args)
    import tempfile

    import torch
    from safetensors.torch import load_file

    cores = os.cpu_count() or 1
    worlds = [int(w) for w in args.worlds.split(",")]
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        plan = [(1, 1)] + [(w, args.threads or max(1, cores // w)) for w in worlds]
        for world, threads in dict.fromkeys(plan):
            runs.append(run_world(world, threads, args, Path(tmp)))
            print(f"world {world} x {threads} threads: sample {runs[-1]['sample_s']:.3f} s, "
                  f"evaluate {runs[-1]['evaluate_s']:.3f} s", flush=True)
        base = load_file(runs[0]["tensors"])
        for r in runs:
            got = load_file(r.pop("tensors"))
            r["same_as_world_1"] = all(torch.equal(got[k], base[k]) for k in base)
    dev = "cuda" if args.device.startswith("cuda") else "cpu"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"n": args.n, "ddim_steps": args.steps, "cores": cores, "torch": torch.__version__,
            "device": args.device}
    (out / f"world_size_{dev}.json").write_text(json.dumps({"meta": meta, "runs": runs}, indent=1))
    ref = {k: runs[0][k] for k in ("sample_s", "evaluate_s")}
    lines = [f"# Throughput against world size ({dev}, {cores} cores, torch {torch.__version__})", "",
             f"N = {args.n} models; sampling: DDIM {args.steps} steps, small autoencoder (D = 384); evaluation: "
             "MNIST-1D CNN, last two BN layers generated, 1000 test inputs. Fastest of "
             f"{args.repeats}; speed-up over 1 process with 1 thread.", "",
             "| processes x threads | sample (s) | models/s | speed-up | evaluate (s) | models/s | speed-up "
             "| same models and accuracies as 1 process |", "|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in runs:
        lines.append(f"| {r['world']} x {r['threads']} | {r['sample_s']:.3f} | {args.n / r['sample_s']:.0f} | "
                     f"{ref['sample_s'] / r['sample_s']:.2f} | {r['evaluate_s']:.3f} | {args.n / r['evaluate_s']:.0f} "
                     f"| {ref['evaluate_s'] / r['evaluate_s']:.2f} | {'yes' if r['same_as_world_1'] else 'NO'} |")
    (out / f"world_size_{dev}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
