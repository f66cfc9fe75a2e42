"""Compile every Triton kernel of pdiff_fast for sm_90 (H100 / H200) without a GPU.

    python benchmarks/compile_sm90.py            # all variants, a table on stdout
    python benchmarks/compile_sm90.py --quick    # the first and last variant of each kernel (CI)

Runs Triton's real compiler (TTIR -> TTGIR -> LLVM -> PTX -> ptxas cubin) for
GPUTarget("cuda", 90, 32), so a kernel that the interpreter accepts but the compiler rejects is
caught on a CPU machine. Variants: every constexpr flag combination the launchers in kernels/
use, for fp32 (and fp16 / bf16 where the op takes them), with the tile sizes the launchers pick
on CUDA (a representative subset of them where they depend on the shape). Works with Triton 3.6
(the GPU image) and 3.9 (dev). Exit status 1 when any variant fails. TRITON_INTERPRET must not
be set: the interpreter replaces the compiler.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import inspect
import itertools
import os
import sys
import tempfile
import time
import traceback

if os.environ.get("TRITON_INTERPRET", "0") == "1":
    sys.exit("compile_sm90: unset TRITON_INTERPRET (the interpreter replaces the compiler)")

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from pdiff_fast.kernels import act_norm_conv1d as conv_mod  # noqa: E402
from pdiff_fast.kernels import act_norm_conv1d_stats as conv_stats_mod  # noqa: E402
from pdiff_fast.kernels import act_norm_conv1d_weight_grad as wg  # noqa: E402
from pdiff_fast.kernels import ddim_step as ddim_mod  # noqa: E402
from pdiff_fast.kernels import solver_step as solver_mod  # noqa: E402
from pdiff_fast.kernels import ddpm_step as ddpm_mod  # noqa: E402
from pdiff_fast.kernels import eps_mse as mse_mod  # noqa: E402
from pdiff_fast.kernels import q_sample as q_mod  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)
FLOAT_ARGS = {"eps", "two_over_n", "n_elements", "sqrt_a", "sqrt_1ma", "sqrt_a_prev", "direction", "sigma",
              "a", "b", "cx", "c0", "c1", "cz"}  # the last six: solver_step
INT64_PTRS = {"t_ptr", "seed_ptr", "row_offset_ptr"}
FP32_PTRS = {"partial_ptr", "loss_ptr", "coefs_ptr", "mean_ptr", "rstd_ptr", "pmean_ptr", "pm2_ptr",
             "s1_ptr", "s2_ptr", "dh_ptr"}


def _jit_fn(kernel):
    """The JITFunction under a kernel (3.6 and 3.9 both expose .fn on autotuned/heuristic wrappers)."""
    while not hasattr(kernel, "arg_names"):
        kernel = kernel.fn
    return kernel


def signature(kernel, dtype: str, ptrs: dict | None = None, ints: dict | None = None) -> dict:
    """{arg: type} for ASTSource: pointers to `dtype` unless known fp32 / int64 or given in
    `ptrs`; scalars i32 (or `ints`), the FLOAT_ARGS fp32; constexprs 'constexpr'."""
    fn = _jit_fn(kernel)
    sig = {}
    for p in fn.params:
        name = p.name
        if p.is_constexpr:
            sig[name] = "constexpr"
        elif name in (ptrs or {}):
            sig[name] = ptrs[name]
        elif name.endswith("_ptr"):
            sig[name] = "*i64" if name in INT64_PTRS else "*fp32" if name in FP32_PTRS else f"*{dtype}"
        elif name in FLOAT_ARGS:
            sig[name] = "fp32"
        else:
            sig[name] = (ints or {}).get(name, "i32")
    return sig


def compile_one(kernel, sig: dict, constexprs: dict, num_warps: int = 4) -> str:
    """PTX of one variant (raises on a compiler error)."""
    fn = _jit_fn(kernel)
    missing = [p.name for p in fn.params if p.is_constexpr and p.name not in constexprs and p.default is inspect._empty]
    if missing:
        raise ValueError(f"constexprs not given: {missing}")
    src = ASTSource(fn, sig, constexprs=constexprs)
    compiled = triton.compile(src, target=TARGET, options={"num_warps": num_warps})
    if "cubin" not in compiled.asm:
        raise RuntimeError("no cubin (ptxas did not run)")
    return compiled.asm["ptx"]


def variants(quick: bool):
    """(kernel name, variant label, kernel, signature, constexprs, num_warps) for every variant."""
    dtypes = ["fp32"] if quick else ["fp32", "fp16", "bf16"]
    pick = (lambda xs: xs[:1]) if quick else (lambda xs: xs)

    # eps_mse: forward partials + finish, backward
    for dt in dtypes:
        yield ("eps_mse.partial", dt, mse_mod._eps_mse_partial_kernel, signature(mse_mod._eps_mse_partial_kernel, dt),
               {"BLOCK": mse_mod._BLOCK}, 8)
        for need in [(True, False), (False, True), (True, True)]:
            yield ("eps_mse.backward", f"{dt} pred={need[0]} target={need[1]}", mse_mod._eps_mse_backward_kernel,
                   signature(mse_mod._eps_mse_backward_kernel, dt),
                   {"NEED_PRED": need[0], "NEED_TARGET": need[1], "BLOCK": mse_mod._BWD_BLOCK}, 4)
    for block in pick([1 << i for i in range(11)]):  # min(next_pow2(n_programs), _MAX_PARTIALS)
        yield ("eps_mse.finish", f"BLOCK={block}", mse_mod._eps_mse_finish_kernel,
               signature(mse_mod._eps_mse_finish_kernel, "fp32"), {"BLOCK": block}, 4)

    # elementwise DDPM kernels: every flag set, tiles of (few long rows) and (many short rows)
    tiles = pick([(1, 2048), (512, 4), (16, 128), (2, 1024)])
    seed_ints = {"seed": "i64", "seed_offset": "i64", "row_offset": "i64"}  # the i32 forms are covered too
    for dt, (rows, bm) in itertools.product(dtypes, tiles):
        tile = {"ROWS": rows, "BLOCK_M": bm}
        for clip, mode, sp, rp in itertools.product([True, False], [1, 2], [False, True], [False, True]):
            if mode == 1 and (sp or rp):
                continue
            flags = {"CLIP": clip, "NOISE": mode, "SEED_FROM_PTR": sp, "ROW_OFFSET_FROM_PTR": rp}
            for ints in ({}, seed_ints) if mode == 2 and not quick else ({},):
                yield ("ddpm_step", _label(dt, flags, tile, ints), ddpm_mod._ddpm_step_kernel,
                       signature(ddpm_mod._ddpm_step_kernel, dt, ints=ints), {**flags, **tile}, 4)
        for clip, mode, sp, rp in itertools.product([True, False], [0, 1, 2], [False, True], [False, True]):
            if mode != 2 and (sp or rp):
                continue
            flags = {"CLIP": clip, "CLAMP": not clip, "NOISE": mode, "SEED_FROM_PTR": sp, "ROW_OFFSET_FROM_PTR": rp}
            yield ("ddim_step", _label(dt, flags, tile), ddim_mod._ddim_step_kernel,
                   signature(ddim_mod._ddim_step_kernel, dt), {**flags, **tile}, 4)
        for clamp, prev, mode, sp, rp in itertools.product([True, False], [True, False], [0, 1, 2], [False, True],
                                                           [False, True]):
            if mode != 2 and (sp or rp):
                continue
            flags = {"CLIP": True, "CLAMP": clamp, "HAS_PREV": prev, "NOISE": mode, "SEED_FROM_PTR": sp,
                     "ROW_OFFSET_FROM_PTR": rp}
            yield ("solver_step", _label(dt, flags, tile), solver_mod._solver_step_kernel,
                   signature(solver_mod._solver_step_kernel, dt), {**flags, **tile}, 4)
        for mode, sp, rp in itertools.product([1, 2], [False, True], [False, True]):
            if mode == 1 and (sp or rp):
                continue
            flags = {"NOISE": mode, "SEED_FROM_PTR": sp, "ROW_OFFSET_FROM_PTR": rp}
            yield ("q_sample.forward", _label(dt, flags, tile), q_mod._q_sample_fwd_kernel,
                   signature(q_mod._q_sample_fwd_kernel, dt), {**flags, **tile}, 4)
        for need in [(True, False), (False, True), (True, True)]:
            flags = {"NEED_X0": need[0], "NEED_NOISE": need[1]}
            yield ("q_sample.backward", _label(dt, flags, tile), q_mod._q_sample_bwd_kernel,
                   signature(q_mod._q_sample_bwd_kernel, dt), {**flags, **tile}, 4)

    yield from _conv_variants(dtypes, quick)


def _conv_variants(dtypes, quick: bool):
    """act_norm_conv1d: the kernels with the flag sets its forward and backward launch."""
    neg = conv_mod.NEGATIVE_SLOPE
    m, st = conv_mod, conv_stats_mod  # the conv and weight-grad kernels; the reductions
    for dt in dtypes:
        dot = ["tf32", "ieee"] if dt == "fp32" else ["tf32"]  # launch.dot_precision: 16-bit operands ignore it
        # stats: one tile (writes mean / rstd) or split rows (partials), with / without add and act
        for has_add, pre_act, single, write_h in itertools.product([False, True], repeat=4):
            if write_h and not single:
                continue  # h is written only when one program holds whole rows
            block_r, block_l = (2, 2048) if single else (1, 2048)
            flags = {"HAS_ADD": has_add, "PRE_ACT": pre_act, "SINGLE_TILE": single, "WRITE_H": write_h,
                     "NEG_SLOPE": neg, "BLOCK_R": block_r, "BLOCK_L": block_l}
            yield ("conv.stats", _label(dt, flags), st._stats_kernel, signature(st._stats_kernel, dt), flags, 4)
        # forward conv: normalized input, every epilogue flag; both conv modes; K = 1, 3, 5
        epilogues = list(itertools.product([False, True], repeat=5))  # add, act, bias, res, tanh
        if quick:
            epilogues = [(False,) * 5, (True,) * 5]
        for transposed, (has_add, pre_act, bias, res, tanh), prec in itertools.product(
                [False, True], epilogues, dot):
            flags = {"K": 3, "TRANSPOSED": transposed, "HAS_ADD": has_add, "PRE_ACT": pre_act, "NORMALIZE": True,
                     "HAS_BIAS": bias, "HAS_RES": res, "POST_TANH": tanh, "NEG_SLOPE": neg,
                     "DOT_PRECISION": prec, "BLOCK_O": 64, "BLOCK_N": 64, "BLOCK_C": 32, "NUM_STAGES": 1}
            yield ("conv.forward", _label(dt, flags), m._conv_kernel, signature(m._conv_kernel, dt), flags, 8)
        # the plain, pipelined loop: input normalized by the stats kernel (short rows)
        for res, tanh, prec in itertools.product([False, True], [False, True], dot):
            flags = {"K": 3, "TRANSPOSED": False, "HAS_ADD": False, "PRE_ACT": False, "NORMALIZE": False,
                     "HAS_BIAS": True, "HAS_RES": res, "POST_TANH": tanh, "NEG_SLOPE": neg,
                     "DOT_PRECISION": prec, "BLOCK_O": 128, "BLOCK_N": 128, "BLOCK_C": 32, "NUM_STAGES": 2}
            yield ("conv.plain", _label(dt, flags), m._conv_kernel, signature(m._conv_kernel, dt), flags, 8)
        # adjoint conv of the backward: plain conv into an fp32 buffer, small channel tiles, K = 1 / 5
        for transposed, k, prec in itertools.product([False, True], [1, 5] if not quick else [5], dot):
            flags = {"K": k, "TRANSPOSED": transposed, "HAS_ADD": False, "PRE_ACT": False, "NORMALIZE": False,
                     "HAS_BIAS": False, "HAS_RES": False, "POST_TANH": False, "NEG_SLOPE": neg,
                     "DOT_PRECISION": prec, "BLOCK_O": 16, "BLOCK_N": 128, "BLOCK_C": 16, "NUM_STAGES": 1}
            yield ("conv.adjoint", _label(dt, flags), m._conv_kernel,
                   signature(m._conv_kernel, dt, ptrs={"y_ptr": "*fp32"}), flags, 4)
        for transposed, has_add, pre_act, prec in itertools.product([False, True], [False, True], [False, True], dot):
            flags = {"HAS_ADD": has_add, "PRE_ACT": pre_act, "TRANSPOSED": transposed, "NEG_SLOPE": neg,
                     "DOT_PRECISION": prec, "BLOCK_D": 64, "BLOCK_S": 64, "BLOCK_M": 64}
            for out in (dt, "fp32"):  # dW itself, or fp32 split partials
                yield ("conv.weight_grad", _label(dt, flags) + f" dw={out}", wg._weight_grad_kernel,
                       signature(wg._weight_grad_kernel, dt, ptrs={"dw_ptr": f"*{out}"}), flags, 4)
        for has_add, pre_act in itertools.product([False, True], repeat=2):
            flags = {"HAS_ADD": has_add, "PRE_ACT": pre_act, "NEG_SLOPE": neg, "BLOCK_R": 2, "BLOCK_L": 2048}
            yield ("conv.norm_bwd_sums", _label(dt, flags), st._norm_bwd_sums_kernel,
                   signature(st._norm_bwd_sums_kernel, dt), flags, 4)
            yield ("conv.norm_bwd_dx", _label(dt, flags), st._norm_bwd_dx_kernel,
                   signature(st._norm_bwd_dx_kernel, dt), flags, 4)
        yield ("conv.tanh_bwd", dt, m._tanh_bwd_kernel, signature(m._tanh_bwd_kernel, dt), {"BLOCK": 1024}, 4)
        for src, dst in [(dt, dt), (dt, "fp32"), ("fp32", dt)]:  # gradients, partials, partials -> result
            for bq, bu in [(32, 128), (1, 128), (4096, 2)] if not quick else [(32, 128)]:
                flags = {"BLOCK_Q": bq, "BLOCK_U": bu}
                yield ("conv.sum", f"{src}->{dst} " + _label("", flags), st._sum_kernel,
                       signature(st._sum_kernel, dt, ptrs={"in_ptr": f"*{src}", "out_ptr": f"*{dst}"}), flags, 4)
    for bt, br in [(32, 128), (1, 16)]:
        flags = {"BLOCK_T": bt, "BLOCK_R": br}
        yield ("conv.stats_finalize", _label("fp32", flags), st._stats_finalize_kernel,
               signature(st._stats_finalize_kernel, "fp32"), flags, 4)


def _label(dt: str, flags: dict, tile: dict | None = None, ints: dict | None = None) -> str:
    short = {k: v for k, v in flags.items() if k != "NEG_SLOPE"}
    parts = [dt] if dt else []
    parts += [f"{k}={int(v) if isinstance(v, bool) else v}" for k, v in {**short, **(tile or {})}.items()]
    if ints:
        parts.append("i64-scalars")
    return " ".join(parts)


def selected(quick: bool, only: str) -> list:
    """The variants to compile, without duplicates; --quick keeps each kernel's first and last."""
    seen, picked = set(), {}
    for v in variants(quick):
        if only in v[0] and (v[0], v[1]) not in seen:
            seen.add((v[0], v[1]))
            picked.setdefault(v[0], []).append(v)
    return [v for vs in picked.values() for v in ((vs[:1] + vs[-1:]) if quick and len(vs) > 1 else vs)]


def _compile_index(args) -> tuple[str, str]:
    """(status, ptx size or error) of variant `i`; runs in a worker process."""
    quick, only, i = args
    name, label, kernel, sig, constexprs, warps = selected(quick, only)[i]
    try:
        return "ok", str(len(compile_one(kernel, sig, constexprs, warps)))
    except Exception as exc:  # report and go on: one table with every failure
        detail = "".join(traceback.format_exception_only(type(exc), exc)).strip().splitlines()
        return "error", detail[-1][:300] if detail else type(exc).__name__


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the first and last variant of each kernel")
    parser.add_argument("--only", default="", help="compile only kernels whose name contains this")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="compiler processes")
    args = parser.parse_args(argv)
    # a fresh cache: a cached cubin would hide a compiler that no longer accepts the kernel
    os.environ["TRITON_CACHE_DIR"] = tempfile.mkdtemp(prefix="pdiff_fast_sm90_")
    todo = selected(args.quick, args.only)
    print(f"triton {triton.__version__}, target {TARGET}, {len(todo)} variants")
    print(f"{'kernel':<22} {'variant':<88} {'status':<6} {'ptx bytes':>9}")
    failures, start = 0, time.perf_counter()
    with concurrent.futures.ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        results = pool.map(_compile_index, [(args.quick, args.only, i) for i in range(len(todo))])
        for (name, label, *_), (status, info) in zip(todo, results):
            if status == "ok":
                print(f"{name:<22} {label:<88} {status:<6} {info:>9}", flush=True)
            else:
                failures += 1
                print(f"{name:<22} {label:<88} {status:<6} {'-':>9}\n    {info}", flush=True)
    print(f"{len(todo) - failures}/{len(todo)} variants compiled for sm_90 in {time.perf_counter() - start:.0f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
