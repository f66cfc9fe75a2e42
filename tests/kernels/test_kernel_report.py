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
