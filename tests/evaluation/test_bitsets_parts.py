"""pdiff_fast.evaluation.bitsets' parts, value by value: the popcount table, wrong counts in row
blocks of any budget (and of rows with no bytes), the accuracy from them, and bits written at every
offset and width next to bits that must stay. Written against the mutants mutmut left alive
(tests/mutation, docs/mutation-scores.md)."""
import math

import pytest
import torch

from pdiff_fast.evaluation import bitsets
from pdiff_fast.ops.iou_matrix import pack_bits


def test_the_popcount_table():
    assert bitsets._POPCOUNT.shape == (256,)
    assert bitsets._POPCOUNT.tolist() == [sum((i >> k) & 1 for k in range(8)) for i in range(256)]


@pytest.mark.parametrize("budget", [1, 16, 16 * 3, 16 * 3 * 2 + 1, 64 << 20])  # 1, 1, 1, 2 and all rows a block
def test_wrong_counts_in_blocks_of_any_budget(budget):
    g = torch.Generator().manual_seed(0)
    mask = torch.rand(7, 20, generator=g) < torch.rand(7, 1, generator=g)
    mask[0], mask[1] = False, True
    bits = pack_bits(mask)  # (7, 3)
    got = bitsets._wrong_counts(bits, budget)
    assert got.dtype == torch.int64 and got.tolist() == mask.sum(1).tolist()
    assert got.tolist()[:2] == [0, 20]
    assert torch.equal(bitsets._wrong_counts(bits), got)


def test_wrong_counts_of_rows_with_no_bytes_and_of_no_rows():
    assert bitsets._wrong_counts(torch.zeros(3, 0, dtype=torch.uint8), budget=16).tolist() == [0, 0, 0]
    assert bitsets._wrong_counts(torch.zeros(3, 0, dtype=torch.uint8)).tolist() == [0, 0, 0]
    assert bitsets._wrong_counts(torch.full((2, 1), 255, dtype=torch.uint8), budget=1).tolist() == [8, 8]


def test_accuracy_is_the_share_of_right_answers_in_percent():
    mask = torch.zeros(4, 10, dtype=torch.bool)
    mask[1, :3] = True
    mask[2] = True
    mask[3, 9] = True
    finite = torch.tensor([True, True, True, False])
    acc = bitsets._accuracy(pack_bits(mask), finite, 10)
    assert acc.dtype == torch.float32
    assert acc[:3].tolist() == [100.0, 70.0, 0.0] and math.isnan(acc[3].item())
    # the float32 values of (preds == y).float().mean(1) * 100 (one division of an exact count)
    mask = torch.rand(50, 7) < 0.5
    want = (~mask).float().mean(1) * 100
    assert torch.equal(bitsets._accuracy(pack_bits(mask), torch.ones(50, dtype=torch.bool), 7), want)


@pytest.mark.parametrize("c0", range(0, 17))
@pytest.mark.parametrize("n", [1, 2, 7, 8, 9, 16])
def test_write_bits_sets_exactly_its_columns_of_its_rows(c0, n):
    width = 40
    g = torch.Generator().manual_seed(c0 * 100 + n)
    before = torch.rand(5, width, generator=g) < 0.5
    piece = torch.rand(3, n, generator=g) < 0.5
    rows = torch.tensor([0, 2, 4])
    bits = pack_bits(before)
    bitsets._write_bits(bits, rows, c0, piece)
    want = before.clone()
    want[0, c0:c0 + n], want[2, c0:c0 + n], want[4, c0:c0 + n] = piece
    assert torch.equal(bits, pack_bits(want))
    ones, zeros = pack_bits(torch.ones(5, width, dtype=torch.bool)), pack_bits(torch.zeros(5, width, dtype=torch.bool))
    bitsets._write_bits(ones, slice(1, 4), c0, torch.zeros(3, n, dtype=torch.bool))
    bitsets._write_bits(zeros, slice(1, 4), c0, torch.ones(3, n, dtype=torch.bool))
    cleared = torch.ones(5, width, dtype=torch.bool)
    cleared[1:4, c0:c0 + n] = False
    assert torch.equal(ones, pack_bits(cleared)) and torch.equal(zeros, pack_bits(~cleared))
