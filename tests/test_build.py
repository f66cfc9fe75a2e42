"""The build decisions of setup.py (CUDA or not, nvcc / torch CUDA version check), tested as plain
functions: setup.py is imported under another name, so setup() does not run. No compiler runs."""
import importlib.util
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def build():
    spec = importlib.util.spec_from_file_location("pdiff_fast_setup", ROOT / "setup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cpu_torch_builds_without_cuda_even_with_nvcc(build):
    assert build.cuda_build(None, "13.0", env={}) == (False, "torch is a CPU build")


def test_cuda_torch_without_nvcc_builds_without_cuda(build):
    with_cuda, why = build.cuda_build("13.0", None, env={})
    assert not with_cuda and "no nvcc" in why


def test_cuda_torch_and_nvcc_build_cuda_without_a_gpu(build):
    # no GPU is consulted: a build machine without one still builds the CUDA kernels
    assert build.cuda_build("13.0", "13.0", env={})[0]
    assert build.cuda_build("12.8", "12.4", env={})[0]  # minor versions may differ


def test_force_cuda(build):
    assert build.cuda_build("13.0", "13.0", env={"FORCE_CUDA": "1"})[0]
    with pytest.raises(build.CudaBuildError, match="no nvcc"):
        build.cuda_build("13.0", None, env={"FORCE_CUDA": "1"})
    with pytest.raises(build.CudaBuildError, match="CPU build"):
        build.cuda_build(None, "13.0", env={"FORCE_CUDA": "1"})


def test_no_cuda_wins(build):
    assert not build.cuda_build("13.0", "13.0", env={"PDIFF_FAST_NO_CUDA": "1", "FORCE_CUDA": "1"})[0]


@pytest.mark.parametrize("env", [{}, {"FORCE_CUDA": "1"}])
def test_major_version_mismatch_is_a_clear_error(build, env):
    with pytest.raises(build.CudaBuildError) as err:
        build.cuda_build("12.8", "13.0", env=env)
    message = str(err.value)
    assert "nvcc is CUDA 13.0" in message and "torch was built with CUDA 12.8" in message
    assert "PDIFF_FAST_ALLOW_CUDA_MISMATCH=1" in message


def test_mismatch_allowed_by_env(build):
    assert build.cuda_build("12.8", "13.0", env={"PDIFF_FAST_ALLOW_CUDA_MISMATCH": "1"})[0]


def test_nvcc_version_parses_the_release(build, tmp_path):
    nvcc = tmp_path / "bin" / "nvcc"
    nvcc.parent.mkdir()
    nvcc.write_text("#!/bin/sh\necho 'Cuda compilation tools, release 13.0, V13.0.88'\n")
    nvcc.chmod(0o755)
    assert build.nvcc_version(str(tmp_path)) == "13.0"
    assert build.nvcc_version(str(tmp_path / "missing")) is None


def test_no_fast_math_and_no_pinned_std(build):
    # --use_fast_math flushes denormals to zero (breaks the bit-exact casts); torch picks -std itself
    flags = build.CXX_FLAGS + build.NVCC_FLAGS
    assert "--use_fast_math" not in flags
    assert not any(f.startswith("-std=") for f in flags)


def test_setup_runs_only_as_main(build):
    # importing setup.py must not have built or installed anything
    assert not hasattr(build, "ext_modules")
    assert os.path.basename(build.__file__) == "setup.py"
