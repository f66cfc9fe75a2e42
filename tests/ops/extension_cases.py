"""Shared set-up of the tests of ops that run on the extension pdiff_fast._C (iou_matrix,
norm_affine_act): whether it is built, with CUDA, and the devices to run them on."""
import pytest
import torch

from pdiff_fast import backend

HAS_EXT = not isinstance(backend.load_extension(), Exception)
EXT_HAS_CUDA = HAS_EXT and bool(backend.load_extension().has_cuda())
needs_ext = pytest.mark.skipif(not HAS_EXT, reason="the extension pdiff_fast._C is not built")


def devices(ext_cuda: bool = False):
    """cpu, and cuda: skipped without a GPU and, for tests that call the extension's CUDA
    kernels (ext_cuda=True), when the extension was built without CUDA (has_cuda() False: a
    CPU-only build on a CUDA machine)."""
    if not torch.cuda.is_available():
        cuda_skip = "needs a CUDA GPU"
    elif ext_cuda and not HAS_EXT:
        cuda_skip = "the extension pdiff_fast._C is not built"
    elif ext_cuda and not EXT_HAS_CUDA:
        cuda_skip = ("the extension pdiff_fast._C was built without CUDA (has_cuda() is False); "
                     "rebuild it with CUDA (FORCE_CUDA=1) to test its CUDA kernels")
    else:
        cuda_skip = None
    marks = [pytest.mark.skip(reason=cuda_skip)] if cuda_skip else []
    return ["cpu", pytest.param("cuda", marks=marks)]
