"""The compiled code of every Triton kernel variant that the real launchers pick at the headline
shapes, compiled for sm_90a (H100 / H200) on a machine without a GPU.

    python -m benchmarks.kernel_report            # table on stdout
    python -m benchmarks.kernel_report --write    # also benchmarks/results/sm90_kernels.{md,json}
    python -m benchmarks.kernel_report --check    # exit 1 on a spill in a hot variant, shared
                                                  # memory beyond the SM, or a dot without tensor cores

How: a compile-only Triton driver (target sm_90a, no device) and `launch.COMPILE_ONLY_SMS` make the
launchers in kernels/ pick their tiles, grids and dot precision as on a 132-SM H100 while the
tensors stay on the CPU; every launch becomes `warmup=True` (compile, do not run), so the variants
recorded are exactly those a GPU run would compile at these shapes. The data are never read and the
outputs never written: only shapes, strides, dtypes and flags reach the kernels. For each variant,
Triton's bundled `cuobjdump` reads the cubin: registers, stack (spilled or local bytes), the SASS
instruction counts that matter (wgmma = HGMMA, mma = HMMA, async copies LDGSTS / TMA, local loads
and stores LDL / STL), and the occupancy that registers and shared memory allow.

Workloads (hot: what "auto" runs on CUDA; the rest is reported, not enforced):
  sample  resnet18 N=1000 (denoiser widths 64..512, latent 12) DDPM, DDIM, DPM-Solver++ steps  [hot]
  decode  resnet18 N=1000 (`medium`, D = 2048)                                             [hot]
  sample  whole-net N=200 (latent 2 x 1570)                                                 [hot]
  train   resnet18 K=200: autoencoder and denoiser forward + backward under use_backend("triton")
TRITON_INTERPRET must be unset (the interpreter replaces the compiler).
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.runtime.jit import JITFunction

TARGET = GPUTarget("cuda", 90, 32)
H100_SMS = 132
# sm_90 limits (CUDA C Programming Guide, compute capability 9.0)
SM_REGISTERS, SM_SHARED, BLOCK_SHARED_MAX, SM_WARPS, SM_BLOCKS = 65536, 228 << 10, 227 << 10, 64, 32
SASS_GROUPS = {  # column -> opcodes counted in it
    "wgmma": ("HGMMA",), "mma": ("HMMA",), "async_copy": ("LDGSTS", "UTMALDG", "UBLKCP", "UTMAPF"),
    "ldl": ("LDL",), "stl": ("STL",),
}
RESULTS = os.path.join(os.path.dirname(__file__), "results")


class CompileOnlyDriver:
    """The slice of Triton's driver interface that JITFunction.run touches before a launch."""

    def is_active(self):
        return True

    def get_current_target(self):
        return TARGET

    def get_current_device(self):
        return 0

    def set_current_device(self, device):
        pass

    def get_current_stream(self, device=None):
        return 0

    def get_active_torch_device(self):
        return torch.device("cpu")

    def map_python_to_cpp_type(self, ty):
        return ty


@dataclasses.dataclass
class Variant:
    kernel: str
    key: str  # the compiled kernel's cache key: one per specialization
    compiled: object
    grid: tuple
    workloads: list
    calls: int = 0


@contextlib.contextmanager
def compile_only(sms: int = H100_SMS):
    """Inside: kernel launches compile for sm_90a and record themselves instead of running."""
    from pdiff_fast import backend
    from pdiff_fast.kernels import launch

    seen: dict[str, Variant] = {}
    current = {"workload": ""}
    run = JITFunction.run

    def record(self, *args, grid, warmup, **kwargs):
        kernel = run(self, *args, grid=grid, warmup=True, **kwargs)
        grid = grid(kwargs) if callable(grid) else tuple(grid)
        key = f"{self.__name__}:{kernel.hash}"
        v = seen.setdefault(key, Variant(self.__name__, key, kernel, grid, []))
        v.calls += 1
        if current["workload"] not in v.workloads:
            v.workloads.append(current["workload"])
        return kernel

    problem = backend._problem
    triton.runtime.driver.set_active(CompileOnlyDriver())
    JITFunction.run = record
    backend._problem = lambda name, op, device: None if name == "triton" else problem(name, op, device)
    launch.COMPILE_ONLY_SMS = sms
    try:
        yield seen, current
    finally:
        launch.COMPILE_ONLY_SMS = None
        backend._problem = problem
        JITFunction.run = run
        with contextlib.suppress(RuntimeError):  # no GPU driver to go back to on a CPU machine
            triton.runtime.driver.reset_active()


def workloads():
    """(name, hot, fn) for each headline workload; fn runs it on CPU tensors."""
    from pdiff_fast import AE_CNN_bottleneck, DDIMScheduler, DDPMScheduler, use_backend
    from pdiff_fast.diffusion import DPMSolverScheduler
    from pdiff_fast.nn.autoencoder import PRESETS
    from pdiff_fast.ops.eps_mse import eps_mse

    def denoise(channels, latent, n):
        def fn():
            den = AE_CNN_bottleneck(latent, 1, channel_list=channels)
            x = torch.empty(n, latent)
            with torch.no_grad(), use_backend("triton"):
                for sched in (DDPMScheduler(), DDIMScheduler(50, eta=0.05), DPMSolverScheduler(20, sde=True)):
                    ts = sched.timesteps()
                    # a noisy first-order step, a second-order one (DPM-Solver) and the last, noiseless one
                    for t in (ts[0], ts[1], ts[-1]):
                        tt = torch.full((n,), t, dtype=torch.long)
                        sched.step(den(x, tt), tt, x, seed=0)
        return fn

    def decode(preset, D, n):
        shape = (n,) + tuple(PRESETS[preset](D).latent_shape())

        def fn():
            ae = PRESETS[preset](D)
            with torch.no_grad(), use_backend("triton"):
                ae.decode(torch.empty(shape))
        return fn

    def train(K):
        def fn():
            ae = PRESETS["medium"](2048)
            den = AE_CNN_bottleneck(12, 1, channel_list=[64, 128, 256, 512])
            sched = DDPMScheduler()
            with use_backend("triton"):
                ae(torch.empty(K, 2048)).sum().backward()
                z = torch.empty(K, 12)
                t = torch.zeros(K, dtype=torch.long)
                zt, noise = sched.add_noise(z.requires_grad_(), t, seed=0)
                eps_mse(den(zt, t), noise).backward()
        return fn

    return [
        ("sample resnet18 N=1000", True, denoise([64, 128, 256, 512], 12, 1000)),
        ("decode resnet18 N=1000", True, decode("medium", 2048, 1000)),
        ("sample whole-net N=200", True, denoise([64, 128, 256, 512], 2 * 1570, 200)),
        ("train resnet18 K=200", False, train(200)),
    ]


def _tool(name: str) -> str:
    if name == "ptxas":  # the ptxas Triton itself compiles sm_90 with (3.9 moved it to ptxas-blackwell)
        from triton.backends.nvidia.compiler import get_ptxas
        return get_ptxas(TARGET.arch).path
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


def cubin_facts(cubin: bytes, ptx: str) -> dict:
    """Registers and SASS counts of one cubin (Triton's bundled cuobjdump), and the spill bytes
    that ptxas -v reports for its PTX. Spills are ptxas's 'spill stores / loads'; the stack frame
    is listed apart: libdevice's sinf / cosf keep a 28-byte local array for the slow path of huge
    arguments (never taken for Box-Muller's 2 pi u), which is local memory but no spill."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f, tempfile.NamedTemporaryFile(suffix=".ptx", mode="w") as p:
        f.write(cubin)
        f.flush()
        p.write(ptx)
        p.flush()
        usage = subprocess.run([_tool("cuobjdump"), "-res-usage", f.name], capture_output=True, text=True,
                               check=True).stdout
        sass = subprocess.run([_tool("cuobjdump"), "-sass", f.name], capture_output=True, text=True, check=True).stdout
        ptxas = subprocess.run([_tool("ptxas"), "-v", "--gpu-name", f"sm_{TARGET.arch}a", p.name, "-o", os.devnull],
                               capture_output=True, text=True, check=True).stderr
    spill = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", ptxas)
    ops = collections.Counter(re.findall(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9]*)", sass))
    counts = {col: sum(ops[o] for o in names) for col, names in SASS_GROUPS.items()}
    return {"registers": int(re.search(r"REG:(\d+)", usage).group(1)),
            "spill_stores": int(spill.group(1)), "spill_loads": int(spill.group(2)),
            "stack_bytes": int(re.search(r"STACK:(\d+)", usage).group(1)), **counts,
            "sass_instructions": sum(ops.values())}


def ctas_per_sm(registers: int, num_warps: int, shared: int) -> int:
    """Resident CTAs per SM on sm_90 from registers (allocated per warp in 256s), warps and shared."""
    regs_per_warp = math.ceil(registers * 32 / 256) * 256
    by_regs = (SM_REGISTERS // regs_per_warp) // num_warps if regs_per_warp else SM_BLOCKS
    by_shared = SM_SHARED // (shared + 1024) if shared else SM_BLOCKS  # 1 KB per CTA is reserved
    return min(SM_BLOCKS, SM_WARPS // num_warps, by_regs, by_shared)


def label(compiled) -> str:
    """The variant's constexprs (flags and tiles) and launch options, short."""
    src = compiled.src if hasattr(compiled, "src") else None
    consts = getattr(src, "constants", None) or {}
    fn = getattr(src, "fn", None)
    names = [p.name for p in fn.params] if fn is not None else []
    parts = []
    for k, v in sorted(consts.items(), key=lambda kv: str(kv[0])):
        name = names[k[0]] if isinstance(k, tuple) and names and k[0] < len(names) else str(k)
        if name in ("NEG_SLOPE",) or not name.isupper():
            continue
        parts.append(f"{name}={int(v) if isinstance(v, bool) else v}")
    return " ".join(parts)


def collect(quick_workloads: bool = False) -> tuple[list[dict], dict]:
    rows, hot_names, started = [], set(), time.perf_counter()
    todo = workloads()  # built outside: their set-up (latent shapes) runs on torch, not recorded
    with compile_only() as (seen, current):
        for name, hot, fn in todo:
            current["workload"] = name
            fn()
            if hot:
                hot_names.add(name)
    for v in seen.values():
        md = v.compiled.metadata
        facts = cubin_facts(v.compiled.asm["cubin"], v.compiled.asm["ptx"])
        shared = int(md.shared)
        rows.append({
            "kernel": v.kernel, "variant": label(v.compiled), "num_warps": md.num_warps,
            "num_stages": md.num_stages, "grid": list(v.grid), "shared_bytes": shared,
            "ctas_per_sm": ctas_per_sm(facts["registers"], md.num_warps, shared),
            "has_dot": "tt.dot" in v.compiled.asm.get("ttir", ""),
            "num_stages_loop": int(re.search(r"NUM_STAGES=(\d+)", label(v.compiled) + " NUM_STAGES=1").group(1)),
            "hot": any(w in hot_names for w in v.workloads), "workloads": v.workloads, "launches": v.calls, **facts,
        })
    rows.sort(key=lambda r: (not r["hot"], r["kernel"], r["variant"]))
    meta = {"triton": triton.__version__, "torch": torch.__version__, "target": "sm_90a", "sms": H100_SMS,
            "seconds": round(time.perf_counter() - started, 1)}
    return rows, meta


def problems(rows: list[dict]) -> list[str]:
    """What --check fails on."""
    out = []
    for r in rows:
        where = f"{r['kernel']} [{r['variant']}]"
        if r["hot"] and (r["spill_stores"] or r["spill_loads"]):
            out.append(f"{where}: spills in a hot variant ({r['spill_stores']} B stored, {r['spill_loads']} B loaded)")
        if r["shared_bytes"] > BLOCK_SHARED_MAX:
            out.append(f"{where}: {r['shared_bytes']} B shared memory, over the SM's {BLOCK_SHARED_MAX} B per CTA")
        if r["has_dot"] and not (r["wgmma"] or r["mma"]):
            out.append(f"{where}: tl.dot compiled without tensor-core instructions")
        if r["hot"] and r["kernel"] == "_conv_kernel" and r["num_stages_loop"] > 1 and not r["async_copy"]:
            out.append(f"{where}: the pipelined conv main loop has no async copy")
    return out


COLUMNS = ["kernel", "variant", "hot", "num_warps", "num_stages", "registers", "spill_stores", "spill_loads",
           "stack_bytes", "shared_bytes",
           "ctas_per_sm", "wgmma", "mma", "async_copy", "ldl", "stl", "launches"]


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [
        "# Triton kernels compiled for sm_90a (H100 / H200), without a GPU",
        "",
        f"Written by `python -m benchmarks.kernel_report --write` (triton {meta['triton']}, torch {meta['torch']}; "
        f"launchers sized for {meta['sms']} SMs). Every variant the real launchers pick at the headline shapes "
        "(benchmarks/kernel_report.py's docstring lists them); `launches` counts the workloads' launches of it "
        "(nine denoiser forwards and steps per sampling workload: three steps each of DDPM, DDIM and DPM-Solver++ 2M SDE). `spill_stores` / `spill_loads`: bytes per thread, "
        "from ptxas -v; `stack_bytes`: the local frame (libdevice's sin / cos keep one for a slow path that "
        "Box-Muller never takes); LDL / STL: local-memory instructions in the SASS; `ctas_per_sm` is what "
        "registers and shared memory allow. CI fails on a spill in a hot variant, shared memory over the SM, "
        "or a dot without tensor-core instructions.",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join("---" if c in ("kernel", "variant") else "---:" for c in COLUMNS) + "|",
    ]
    for r in rows:
        lines.append("| " + " | ".join(_cell(r[c]) for c in COLUMNS) + " |")
    found = problems(rows)
    lines += ["", f"Checks: {'none failed' if not found else f'{len(found)} failed'}."]
    lines += [f"- {p}" for p in found]
    return "\n".join(lines) + "\n"


def _cell(v) -> str:
    if isinstance(v, bool):
        return "yes" if v else ""
    return f"`{v}`" if isinstance(v, str) and "=" in v else str(v)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="write benchmarks/results/sm90_kernels.{md,json}")
    parser.add_argument("--check", action="store_true", help="exit 1 when a check fails")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        sys.exit("kernel_report: unset TRITON_INTERPRET (the interpreter replaces the compiler)")
    # a fresh cache: every variant is compiled here, none taken from an older compiler's run
    os.environ.setdefault("TRITON_CACHE_DIR", tempfile.mkdtemp(prefix="pdiff_fast_sm90_"))
    rows, meta = collect()
    text = markdown(rows, meta)
    print(text)
    if args.write:
        for ext, body in (("md", text), ("json", json.dumps({"meta": meta, "variants": rows}, indent=1) + "\n")):
            path = os.path.join(RESULTS, f"sm90_kernels.{ext}")
            with open(path + ".tmp", "w") as f:
                f.write(body)
            os.replace(path + ".tmp", path)
    return 1 if args.check and problems(rows) else 0


if __name__ == "__main__":
    sys.exit(main())
