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
import os
import signal
import time
import traceback
from pathlib import Path

from benchmarks.gpu_headline_checks import memcheck_workload
from benchmarks.gpu_headline_phases import PHASES, Ctx
# GOALS, OUT_FILES and verdicts: this module's public names before the split (the tests read them)
from benchmarks.gpu_headline_record import GOALS, OUT_FILES, Killed, PhaseTimeout, State, final_table, verdicts  # noqa: F401


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
