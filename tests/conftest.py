"""Shared test set-up. Without a GPU, Triton kernels run in its interpreter: the variable must
be set before anything imports triton, so it is set here, first."""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    """A per-session dataset cache, so tests never touch the user's cache."""
    d = tmp_path_factory.mktemp("cache")
    os.environ["PDIFF_FAST_CACHE"] = str(d)
    return d


@pytest.fixture
def one_thread():
    """One torch thread for the duration of a test (tiny models and ops: faster, and immune to
    a busy machine's OpenMP stalls). Use with pytest.mark.usefixtures("one_thread")."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def ddpm_schedule():
    """The library's DDPM schedule (pdiff_fast.diffusion.schedulers: linear betas 1e-4 -> 2e-2, T = 1000):
    ddpm_schedule(variance_type="fixedlarge") -> a fresh DDPMScheduler, whose .tables(device) are
    the (2, T) noising and (5, T) step coefficient tables the kernels take. The kernel tests use it
    rather than each deriving the tables again; tests/test_diffusion.py derives them independently
    on purpose, to check these."""
    from pdiff_fast.diffusion.schedulers import DDPMScheduler  # here: triton may only be imported after the top

    def make(variance_type: str = "fixedlarge") -> DDPMScheduler:
        return DDPMScheduler(variance_type=variance_type)

    return make
