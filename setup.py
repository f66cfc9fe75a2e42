"""Build and install pdiff_fast.

    pip install torch==2.13.0                      # CPU machines: the CPU wheel, not a CUDA build
    pip install --no-build-isolation -e .          # builds pdiff_fast._C against the installed torch

The extension `pdiff_fast._C` is built from csrc/ by naming convention (as torch-scatter):
csrc/*.cpp (dispatch), csrc/cpu/*.cpp (CPU kernels) and, for a CUDA build, csrc/cuda/*.cu
(CUDA kernels, compiled by nvcc without PyTorch headers).

Which build (`cuda_build()` below; a GPU need not be present, the build machine may have none):
- CUDA when torch is a CUDA build (`torch.version.cuda` set) and nvcc is found (CUDA_HOME, or
  nvcc on PATH), or when FORCE_CUDA=1 (then a missing nvcc or a CPU torch is an error);
- CPU otherwise, or when PDIFF_FAST_NO_CUDA=1.
OpenMP (`openmp_flags()` below): at::parallel_for in the CPU kernels is serial without it, but
not every compiler takes `-fopenmp` (Apple clang needs `-Xpreprocessor -fopenmp -lomp` and a
separately installed libomp). So the build first compiles and links a tiny OpenMP program with
the C++ compiler torch's ninja build uses (`$CXX`, else c++) and passes the first flag set that
works; if none does, it builds without OpenMP and prints a note saying so.

nvcc's CUDA major version must equal torch's (`torch.version.cuda`): a mismatch is an error that
names both, unless PDIFF_FAST_ALLOW_CUDA_MISMATCH=1. PDIFF_FAST_NO_EXT=1 skips the extension;
pdiff_fast then falls back to PyTorch with a warning. The Triton kernels in kernels/ install as
the subpackage pdiff_fast.kernels.

No -std flag is passed: torch's cpp_extension adds the standard its own headers need (C++20
for torch >= 2.10) to both g++ and nvcc. nvcc runs without --use_fast_math: flush-to-zero and
approximate division would break the bit-exact float casts and norm results the tests check.

The functions above the `setup()` call are plain Python with no side effects, so
tests/test_build.py imports this file (its `__name__` is then not "__main__") and tests them.
"""
from __future__ import annotations

import glob
import os
import re
import shlex
import subprocess
import sys
import tempfile
from typing import Callable

from setuptools import setup

CXX_FLAGS = ["-O3"]  # the OpenMP flags that openmp_flags() finds go after these
NVCC_FLAGS = ["-O3"]  # no --use_fast_math (see above)
# extra flags for experiments (e.g. a toolchain workaround), split on spaces, appended last
EXTRA_CXX_FLAGS = os.environ.get("PDIFF_FAST_EXTRA_CXX", "").split()
NVCC_FLAGS += os.environ.get("PDIFF_FAST_EXTRA_NVCC", "").split()

# (compile flags, link flags) to try, in order
OPENMP_GCC = (["-fopenmp"], ["-fopenmp"])  # GCC, and clang where an OpenMP runtime is installed
OPENMP_APPLE_CLANG = (["-Xpreprocessor", "-fopenmp"], ["-lomp"])  # Apple clang has no -fopenmp driver flag

OPENMP_PROBE = """#include <omp.h>
int main() {
  int threads = 0;
#pragma omp parallel reduction(+ : threads)
  threads += 1;
  return threads > 0 && omp_get_max_threads() > 0 ? 0 : 1;
}
"""


def compiles_openmp(compiler: str, compile_flags: list[str], link_flags: list[str], env=None) -> bool:
    """Whether `compiler` (a command line, e.g. "ccache g++") compiles and links OPENMP_PROBE with
    these flags. Linking matters: a missing OpenMP runtime only shows there. The program is not run.
    CPPFLAGS and LDFLAGS are passed as the build passes them (where a keg-only libomp is found)."""
    env = os.environ if env is None else env
    with tempfile.TemporaryDirectory() as tmp:
        source = os.path.join(tmp, "openmp_probe.cpp")
        with open(source, "w") as f:
            f.write(OPENMP_PROBE)
        command = [*shlex.split(compiler), *shlex.split(env.get("CPPFLAGS", "")), *compile_flags, source,
                   "-o", os.path.join(tmp, "openmp_probe"), *shlex.split(env.get("LDFLAGS", "")), *link_flags]
        try:
            return subprocess.run(command, capture_output=True, timeout=120).returncode == 0
        except (OSError, subprocess.SubprocessError):
            return False


def _describe(compile_flags: list[str], link_flags: list[str]) -> str:
    return f"'{' '.join(compile_flags)}' (link '{' '.join(link_flags)}')"


def openmp_flags(compiles: Callable[[list[str], list[str]], bool],
                 platform: str | None = None) -> tuple[list[str], list[str], str]:
    """(compile flags, link flags, why) for OpenMP: the first candidate for which
    `compiles(compile_flags, link_flags)` is true (GCC's flags; on macOS then Apple clang's), else
    no flags and why. `compiles` is `compiles_openmp` bound to the build's compiler."""
    platform = sys.platform if platform is None else platform
    candidates = [OPENMP_GCC, OPENMP_APPLE_CLANG] if platform == "darwin" else [OPENMP_GCC]
    for compile_flags, link_flags in candidates:
        if compiles(compile_flags, link_flags):
            return list(compile_flags), list(link_flags), "OpenMP: " + _describe(compile_flags, link_flags)
    tried = " or ".join(_describe(c, l) for c, l in candidates)
    why = f"no OpenMP: the compiler could not build an OpenMP program with {tried}; the CPU kernels run on one thread"
    if platform == "darwin":
        why += " (install libomp, `brew install libomp`, and set CPPFLAGS and LDFLAGS as brew says)"
    return [], [], why


class CudaBuildError(RuntimeError):
    """The environment asks for a CUDA build that cannot work; the message says why and what to do."""


def _major(version: str | None) -> int | None:
    m = re.match(r"\s*(\d+)", version or "")
    return int(m.group(1)) if m else None


def nvcc_version(cuda_home: str | None) -> str | None:
    """CUDA release of `cuda_home`/bin/nvcc (else nvcc on PATH) as "13.0", or None if none runs."""
    nvcc = os.path.join(cuda_home, "bin", "nvcc") if cuda_home else "nvcc"
    try:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"release (\d+\.\d+)", out)
    return m.group(1) if m else None


def check_cuda_versions(nvcc: str | None, torch_cuda: str | None, env=None) -> None:
    """Raise CudaBuildError when nvcc's CUDA major version differs from torch's."""
    env = os.environ if env is None else env
    if nvcc is None or torch_cuda is None or _major(nvcc) == _major(torch_cuda):
        return
    if env.get("PDIFF_FAST_ALLOW_CUDA_MISMATCH", "0") == "1":
        return
    raise CudaBuildError(
        f"pdiff_fast: nvcc is CUDA {nvcc} but torch was built with CUDA {torch_cuda}: the major "
        f"versions differ ({_major(nvcc)} != {_major(torch_cuda)}), so the CUDA extension would not "
        "load. Point CUDA_HOME at a CUDA " + str(_major(torch_cuda)) + ".x toolkit, install the torch "
        "build for CUDA " + str(_major(nvcc)) + ", build without CUDA (PDIFF_FAST_NO_CUDA=1), or "
        "set PDIFF_FAST_ALLOW_CUDA_MISMATCH=1 to try anyway.")


def cuda_build(torch_cuda: str | None, nvcc: str | None, env=None) -> tuple[bool, str]:
    """(build the CUDA kernels?, why). torch_cuda: `torch.version.cuda` (None for a CPU torch);
    nvcc: `nvcc_version(CUDA_HOME)` (None when no nvcc runs). Raises CudaBuildError where the
    environment asks for something that cannot work. Whether a GPU is present does not matter."""
    env = os.environ if env is None else env
    if env.get("PDIFF_FAST_NO_CUDA", "0") == "1":
        return False, "PDIFF_FAST_NO_CUDA=1"
    if env.get("FORCE_CUDA", "0") == "1":
        if nvcc is None:
            raise CudaBuildError("pdiff_fast: FORCE_CUDA=1 but no nvcc was found: set CUDA_HOME to a "
                                 "CUDA toolkit (or put its bin/ on PATH)")
        if torch_cuda is None:
            raise CudaBuildError("pdiff_fast: FORCE_CUDA=1 but the installed torch is a CPU build "
                                 "(torch.version.cuda is None) and has no CUDA headers: install a CUDA "
                                 "build of torch first")
        check_cuda_versions(nvcc, torch_cuda, env)
        return True, f"FORCE_CUDA=1 (nvcc {nvcc}, torch CUDA {torch_cuda})"
    if torch_cuda is None:
        return False, "torch is a CPU build"
    if nvcc is None:
        return False, f"torch is built for CUDA {torch_cuda} but no nvcc was found (set CUDA_HOME)"
    check_cuda_versions(nvcc, torch_cuda, env)
    return True, f"nvcc {nvcc}, torch CUDA {torch_cuda}"


def extensions():
    if os.environ.get("PDIFF_FAST_NO_EXT", "0") == "1":
        return [], {}
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError:  # no torch yet: pure-Python install, torch fallback at run time
        return [], {}
    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    if not sources:
        return [], {}
    # `pip install --no-build-isolation -e .` runs `setup.py develop`, which recent setuptools
    # turns into a nested `pip install -e . --use-pep517`: isolated again, without torch, so it
    # would silently build no extension. Keep the nested build in this environment too.
    os.environ.setdefault("PIP_NO_BUILD_ISOLATION", "0")
    torch_cuda = torch.version.cuda
    cuda_home = cpp_extension.CUDA_HOME  # CUDA_HOME, else nvcc on PATH, else /usr/local/cuda
    asks = torch_cuda is not None or os.environ.get("FORCE_CUDA", "0") == "1"
    nvcc = nvcc_version(cuda_home) if asks and cuda_home else None
    with_cuda, why = cuda_build(torch_cuda, nvcc)
    print(f"pdiff_fast: building pdiff_fast._C {'with' if with_cuda else 'without'} CUDA ({why})")
    # probe the compiler torch's ninja build compiles the C++ sources with ($CXX, else c++)
    compiler = getattr(cpp_extension, "get_cxx_compiler", lambda: os.environ.get("CXX", "c++"))()
    openmp_compile, openmp_link, openmp_why = openmp_flags(
        lambda compile_flags, link_flags: compiles_openmp(compiler, compile_flags, link_flags))
    print(f"pdiff_fast: {compiler}: {openmp_why}")
    cxx_flags = CXX_FLAGS + openmp_compile + EXTRA_CXX_FLAGS
    define = []
    if with_cuda:
        sources += sorted(glob.glob("csrc/cuda/*.cu"))
        define.append(("WITH_CUDA", None))
        ext = cpp_extension.CUDAExtension(
            "pdiff_fast._C", sources, define_macros=define,
            extra_compile_args={"cxx": cxx_flags, "nvcc": NVCC_FLAGS},
            extra_link_args=openmp_link,
        )
    else:
        ext = cpp_extension.CppExtension(
            "pdiff_fast._C", sources, define_macros=define,
            extra_compile_args={"cxx": cxx_flags}, extra_link_args=openmp_link,
        )
    return [ext], {"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)}


if __name__ == "__main__":  # setuptools and pip run this file as __main__; tests import it
    ext_modules, cmdclass = extensions()

    setup(
        name="pdiff_fast",
        version="0.1.0",
        description="Fast neural-network parameter diffusion (p-diff) on Triton and CUDA",
        long_description=open("README.md").read() if os.path.exists("README.md") else "",
        long_description_content_type="text/markdown",
        packages=["pdiff_fast", "pdiff_fast.ops", "pdiff_fast.kernels", "pdiff_fast.nn", "pdiff_fast.diffusion",
                  "pdiff_fast.evaluation", "pdiff_fast.pipeline", "pdiff_fast.tasks"],
        package_data={"pdiff_fast": ["configs/*.json"]},
        package_dir={"pdiff_fast.kernels": "kernels"},
        python_requires=">=3.10",
        install_requires=[
            "torch>=2.4",  # install torch==2.13.0 first on CPU machines (see README)
            "numpy",
            "safetensors",
            "tqdm",
            "matplotlib",
            "scikit-learn",
            "mnist1d",
        ],
        extras_require={
            "triton": ["triton"],
            "test": ["pytest", "pytest-benchmark", "hypothesis", "diffusers"],
            # generate(..., scheduler=<a diffusers scheduler>) and the samplers' reference tests
            "diffusers": ["diffusers"],
        },
        entry_points={"console_scripts": ["pdiff-fast=pdiff_fast.cli:main"]},
        ext_modules=ext_modules,
        cmdclass=cmdclass,
    )
