"""pdiff_fast.ops.iou_matrix's Python side by hand: the bit packing, the reference IoU (two empty
sets: 1), the checks and their messages, the dispatch and the fake kernel. Written against the
mutants mutmut left alive (tests/mutation, docs/mutation-scores.md); test_iou_matrix.py compares
the extension with the reference, test_evaluate.py the blocked iou_stats with whole matrices."""
import pytest
import torch

from pdiff_fast import backend
from pdiff_fast.ops import iou_matrix as im


def test_pack_and_unpack_by_hand():
    mask = torch.tensor([[True, False, False, False, False, False, False, False, True, True],
                         [False] * 7 + [True] + [False, True]])
    bits = im.pack_bits(mask)
    assert bits.dtype == torch.uint8 and bits.tolist() == [[1, 3], [128, 2]]  # bit k of byte w = column 8w + k
    assert im.unpack_bits(bits, 10).tolist() == mask.tolist()
    assert im.unpack_bits(bits).shape == (2, 16) and not im.unpack_bits(bits)[:, 10:].any()
    whole = torch.tensor([[True] * 8 + [False] * 7 + [True]])  # whole bytes
    assert im.pack_bits(whole).tolist() == [[255, 128]]
    words = torch.tensor([[-(1 << 63) + (1 << 9) + 1]], dtype=torch.int64)  # bits 63 (the sign), 9 and 0
    out = im.unpack_bits(words)
    assert out.shape == (1, 64) and out[0].nonzero().flatten().tolist() == [0, 9, 63]


def test_reference_iou_by_hand():
    a = torch.tensor([[True, True, False, False], [False, False, False, False]])
    b = torch.tensor([[True, False, True, False], [False, False, False, False], [True, True, False, False]])
    iou = im.iou_matrix_torch(a, b)
    assert iou.dtype == torch.float32
    assert iou.tolist() == [[pytest.approx(1 / 3), 0.0, 1.0], [0.0, 1.0, 0.0]]  # two empty sets: 1


def test_checks_name_the_op_and_the_shapes():
    with pytest.raises(ValueError, match=r"^iou_matrix: expected \(Na, W\) and \(Nb, W\) bitsets, got \(2, 3\) and "
                                         r"\(2, 4\)$"):
        im.iou_matrix(torch.zeros(2, 3, dtype=torch.uint8), torch.zeros(2, 4, dtype=torch.uint8))
    for a, b in ((torch.zeros(3, dtype=torch.uint8), torch.zeros(2, 3, dtype=torch.uint8)),
                 (torch.zeros(2, 3, dtype=torch.uint8), torch.zeros(1, 2, 3, dtype=torch.uint8))):
        with pytest.raises(ValueError, match="expected \\(Na, W\\) and \\(Nb, W\\) bitsets"):
            im.iou_matrix(a, b)
    with pytest.raises(ValueError, match=r"^iou_stats: mismatched dtypes torch\.uint8 and torch\.int64$"):
        im.iou_stats(torch.zeros(2, 1, dtype=torch.uint8), torch.zeros(2, 1, dtype=torch.int64))


def test_dispatch(monkeypatch):
    asked, called = [], []
    monkeypatch.setattr(backend, "choose", lambda op, device, auto=True: asked.append((op, device)) or "ext")
    monkeypatch.setattr(im, "extension_op", lambda name: lambda a, b: called.append((name, a, b)) or "EXT")
    a, b = im.pack_bits(torch.tensor([[True, False]])), im.pack_bits(torch.tensor([[True, True]]))
    assert im.iou_matrix(a, b) == "EXT" and called == [("iou_matrix", a, b)]
    assert asked == [("iou_matrix", a.device)]
    monkeypatch.setattr(backend, "choose", lambda op, device, auto=True: "torch")
    assert im.iou_matrix(a, b).tolist() == [[0.5]] and len(called) == 1


def test_block_sizes_by_hand():
    assert im.IOU_BLOCK_BYTES_PER_VALUE == 24 and im.IOU_TORCH_BYTES_PER_BIT == 34 and im.IOU_TORCH_BYTES_PER_VALUE == 48
    assert im._iou_blocks(100, 100, 64, True, 24 * 10) == (1, 10)
    assert im._iou_blocks(100, 5, 64, True, 24 * 20) == (4, 5)
    assert im._iou_blocks(100, 100, 64, True, 0) == (1, 1)
    # torch: s * 64 * 34 + s^2 * 48 <= budget; at budget 48 * 100 + 2176 * 10 = 26560, s = 10
    assert im._iou_blocks(100, 100, 64, False, 26560) == (10, 10)
    assert im._iou_blocks(100, 100, 64, False, 26559) == (9, 9)
    assert im._iou_blocks(3, 2, 64, False, 1 << 30) == (3, 2) and im._iou_blocks(3, 2, 64, False, 1) == (1, 1)


def test_stats_by_hand():
    mask = torch.tensor([[True, True, False, False], [True, False, True, False], [False, False, False, True]])
    bits = im.pack_bits(mask)
    # pairs: (0, 1) 1/3, (0, 2) 0, (1, 2) 0
    for kw in ({}, {"block_rows": 1, "block_cols": 1}, {"block_rows": 2}):
        s = im.iou_stats(bits, **kw)
        assert s.pairs == 6 and s.mean == pytest.approx(2 / 3 / 6) and s.max == pytest.approx(1 / 3)
        assert s.row_max.tolist() == pytest.approx([1 / 3, 1 / 3, 0.0])
        t = im.iou_stats(bits, row_max=False, **kw)
        assert t.pairs == 6 and t.mean == pytest.approx(2 / 3 / 6) and t.max == pytest.approx(1 / 3) and t.row_max is None
    c = im.iou_stats(bits[:1], bits)
    assert c.pairs == 3 and c.mean == pytest.approx((1 + 1 / 3) / 3) and c.max == 1.0 and c.row_max.tolist() == [1.0]
    one = im.iou_stats(bits[:1])
    assert one.pairs == 0 and one.mean != one.mean and one.max != one.max and one.row_max.isnan().all()
    assert im.iou_stats(bits[:1], row_max=False).pairs == 0


def test_fake_kernel():
    out = im._iou_matrix_fake(torch.empty(3, 2, dtype=torch.uint8, device="meta"),
                              torch.empty(5, 2, dtype=torch.uint8, device="meta"))
    assert out.shape == (3, 5) and out.dtype == torch.float32 and out.device.type == "meta"
    with pytest.raises(RuntimeError, match=r"iou_matrix: a_bits and b_bits must be 2-D \(N, W\) packed bitsets, got "
                                           r"\(3,\) and \(5, 2\)"):
        im._iou_matrix_fake(torch.empty(3, device="meta"), torch.empty(5, 2, device="meta"))
    with pytest.raises(RuntimeError, match="must be 2-D"):
        im._iou_matrix_fake(torch.empty(3, 2, device="meta"), torch.empty(5, device="meta"))
