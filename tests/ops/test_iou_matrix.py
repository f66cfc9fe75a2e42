"""iou_matrix: the IoU of packed wrong-prediction bitsets (the extension's popcount kernel on
uint8 / int64 words, on every device) against its torch reference on bool tensors; pack_bits /
unpack_bits round trips; the argument checks. The blocked iou_stats is tested against whole
matrices in tests/test_evaluate.py.
"""
import math

import pytest
import torch
import torch.nn.functional as F

from pdiff_fast import backend
from pdiff_fast.ops.iou_matrix import iou_matrix, iou_matrix_torch, pack_bits, unpack_bits

from extension_cases import devices, needs_ext

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("n", [1, 8, 13, 1000])
def test_pack_unpack_round_trip(n):
    mask = torch.rand(6, n) < 0.3
    packed = pack_bits(mask)
    assert packed.shape == (6, math.ceil(n / 8)) and packed.dtype == torch.uint8
    assert torch.equal(unpack_bits(packed, n), mask)


def random_bits(n_rows, n_bits, density=0.3):
    mask = torch.rand(n_rows, n_bits) < density
    mask[0] = False  # an empty set: IoU with another empty set is 1.0
    return mask


@pytest.mark.parametrize("device", devices(ext_cuda=True))
@pytest.mark.parametrize("words", [torch.uint8, torch.int64])
@pytest.mark.parametrize("n_bits", [7, 64, 1000])
def test_iou_matrix_matches_torch_reference(device, words, n_bits):
    a, b = random_bits(9, n_bits), random_bits(5, n_bits, 0.6)
    b[1] = False
    pa, pb = pack_bits(a), pack_bits(b)
    if words == torch.int64:  # same bits as 64-bit words
        pad = (-pa.shape[1]) % 8
        pa, pb = (F.pad(p, (0, pad)).view(torch.int64) for p in (pa, pb))
    got = iou_matrix(pa.to(device), pb.to(device)).cpu()
    want = iou_matrix_torch(a, b)
    assert got.dtype == torch.float32 and got.shape == (9, 5)
    assert torch.equal(got, want)
    assert got[0, 1] == 1.0  # empty vs empty
    with backend.use_backend("torch"):
        assert torch.equal(iou_matrix(pa, pb), want)


@needs_ext
def test_iou_matrix_errors():
    a = torch.zeros(3, 4, dtype=torch.uint8)
    with pytest.raises(RuntimeError, match="widths"):
        torch.ops.pdiff_fast.iou_matrix(a, torch.zeros(3, 5, dtype=torch.uint8))
    with pytest.raises(RuntimeError, match="mismatched dtypes"):
        torch.ops.pdiff_fast.iou_matrix(a, torch.zeros(3, 4, dtype=torch.int64))
    with pytest.raises(RuntimeError, match="integer dtype"):
        torch.ops.pdiff_fast.iou_matrix(torch.zeros(3, 4), torch.zeros(3, 4))


@pytest.mark.parametrize("backend_name", ["torch", "auto"])
def test_iou_matrix_refuses_mismatched_bitsets(backend_name):
    a = torch.zeros(3, 4, dtype=torch.uint8)
    with backend.use_backend(backend_name):
        with pytest.raises(ValueError, match="bitsets"):
            iou_matrix(a, torch.zeros(3, 5, dtype=torch.uint8))
        with pytest.raises(ValueError, match="bitsets"):
            iou_matrix(a[0], a)
        with pytest.raises(ValueError, match="mismatched dtypes"):
            iou_matrix(a, torch.zeros(3, 4, dtype=torch.int64))
