"""benchmarks/kernel_report.py's arithmetic and checks, on made-up rows (the report itself compiles
every headline variant for sm_90a and runs in .ci/run with --check)."""
import pytest

pytest.importorskip("triton")
report = pytest.importorskip("benchmarks.kernel_report")


def _row(**kw):
    row = {"kernel": "_conv_kernel", "variant": "K=3", "hot": True, "spill_stores": 0, "spill_loads": 0,
           "stack_bytes": 0, "shared_bytes": 65536, "has_dot": True, "wgmma": 4, "mma": 0, "async_copy": 64,
           "num_stages_loop": 2}
    row.update(kw)
    return row


def test_occupancy_from_registers_warps_and_shared():
    # 8 warps at 178 registers: 5888 registers a warp (256-register steps), 11 warps fit -> 1 CTA
    assert report.ctas_per_sm(178, 8, 65536) == 1
    # 4 warps at 64 registers, no shared memory: 2048 registers a warp, 32 warps fit -> 8 CTAs
    assert report.ctas_per_sm(64, 4, 0) == 8
    # shared memory bounds: 100 KB + 1 KB reserved per CTA -> 2 in 228 KB
    assert report.ctas_per_sm(32, 4, 100 << 10) == 2


def test_checks_name_each_problem():
    assert report.problems([_row()]) == []
    found = report.problems([
        _row(spill_stores=8),  # a spill in a hot variant
        _row(hot=False, spill_loads=8),  # not hot: reported, not failed
        _row(shared_bytes=report.BLOCK_SHARED_MAX + 1),
        _row(wgmma=0, mma=0),  # a dot without tensor cores
        _row(async_copy=0),  # a pipelined conv loop without async copies
        _row(stack_bytes=32),  # libdevice's local frame alone is no spill
    ])
    assert len(found) == 4
    assert "spills" in found[0] and "shared memory" in found[1]
    assert "tensor-core" in found[2] and "async copy" in found[3]


NEW_N_SCRIPT = """
import torch
from benchmarks.kernel_report import compile_only
from pdiff_fast import AE_CNN_bottleneck, use_backend
den = AE_CNN_bottleneck(12, 1, channel_list=[16, 32, 32, 64])
with compile_only() as (seen, _):
    counts = []
    for n in (1000, 1024, 992):
        before = len(seen)
        with torch.no_grad(), use_backend("triton"):
            den(torch.empty(n, 12), torch.zeros(n, dtype=torch.long))
        counts.append(len(seen) - before)
print(counts)
"""


def test_a_new_number_of_models_compiles_nothing_new(tmp_path):
    """The conv and stats kernels do not specialize on B or the batch strides: after N = 1000,
    the denoiser at N = 1024 and 992 (batch sizes and strides divisible by 16, which Triton would otherwise specialize on) reuses every compiled variant (compiled for
    sm_90a in a subprocess: this session runs Triton's interpreter)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(PYTHONPATH=str(root), TRITON_CACHE_DIR=str(tmp_path), TRITON_DEFAULT_FP_FUSION="1")
    proc = subprocess.run([sys.executable, "-c", NEW_N_SCRIPT], env=env, capture_output=True, text=True,
                          timeout=600, cwd=root)
    assert proc.returncode == 0, proc.stderr[-2000:]
    first, *later = eval(proc.stdout.strip().splitlines()[-1])
    assert first > 0 and later == [0, 0]
