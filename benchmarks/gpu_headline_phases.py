"""The timed phases of the headline run (benchmarks/gpu_headline.py): the sizes, the context every
phase shares (timing, floor, saving rows) and the phases in their order (PHASES)."""
from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.gpu_headline_checks import phase_spot
from benchmarks.gpu_headline_record import TOP, Killed, PhaseTimeout, State, _atomic_write, _ms


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
