"""Shared test set-up. Without a GPU, Triton kernels run in its interpreter: the variable must
be set before anything imports triton, so it is set here, first."""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


def devices():
    """Devices present on this machine: cpu, plus cuda when available."""
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


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
