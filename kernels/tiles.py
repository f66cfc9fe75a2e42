"""The (rows, columns) tile of an elementwise (B, M) kernel: q_sample, ddpm_step, ddim_step,
solver_step. Tiles rather than a flat pass because the in-kernel noise is a function of the row
(kernels/noise.py); the grid is row-tile major (launch.elementwise_grid)."""
import triton
import triton.language as tl


@triton.jit
def row_tile(B, M, ROWS: tl.constexpr, BLOCK_M: tl.constexpr):
    """(row0, col0, rows, row_ok, mask, base, offs) of this program's tile: its first row and
    column, its (ROWS,) row indices and which exist, the (ROWS, BLOCK_M) mask, and the element
    offsets base + offs (64-bit only in the per-program base; in-tile offsets fit in 32 bits)."""
    pid = tl.program_id(0)
    n_col_blocks = tl.cdiv(M, BLOCK_M)
    row0 = (pid // n_col_blocks) * ROWS
    col0 = (pid % n_col_blocks) * BLOCK_M
    rows = row0 + tl.arange(0, ROWS)
    cols = col0 + tl.arange(0, BLOCK_M)
    row_ok = rows < B
    mask = row_ok[:, None] & (cols < M)[None, :]
    base = row0.to(tl.int64) * M + col0
    offs = tl.arange(0, ROWS)[:, None] * M + tl.arange(0, BLOCK_M)[None, :]
    return row0, col0, rows, row_ok, mask, base, offs
