"""Build and install pdiff_fast.

    pip install torch==2.13.0                      # CPU machines: the CPU wheel, not a CUDA build
    pip install --no-build-isolation -e .          # builds pdiff_fast._C against the installed torch

The extension `pdiff_fast._C` is built from csrc/ by naming convention (as torch-scatter):
csrc/*.cpp (dispatch), csrc/cpu/*.cpp (CPU kernels) and, when CUDA is available or
FORCE_CUDA=1, csrc/cuda/*.cu (CUDA kernels, compiled by nvcc without PyTorch headers).
PDIFF_FAST_NO_EXT=1 skips the extension; pdiff_fast then falls back to PyTorch with a warning.
The Triton kernels in kernels/ install as the subpackage pdiff_fast.kernels.
"""
import glob
import os

from setuptools import setup


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
    with_cuda = os.environ.get("FORCE_CUDA", "0") == "1" or (
        torch.cuda.is_available() and cpp_extension.CUDA_HOME is not None
    )
    cxx = ["-O3", "-std=c++17", "-fopenmp"]  # OpenMP: at::parallel_for is serial without it
    define = []
    if with_cuda:
        sources += sorted(glob.glob("csrc/cuda/*.cu"))
        define.append(("WITH_CUDA", None))
        ext = cpp_extension.CUDAExtension(
            "pdiff_fast._C", sources, define_macros=define,
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "--use_fast_math", "-std=c++17"]},
            extra_link_args=["-fopenmp"],
        )
    else:
        ext = cpp_extension.CppExtension(
            "pdiff_fast._C", sources, define_macros=define,
            extra_compile_args={"cxx": cxx}, extra_link_args=["-fopenmp"],
        )
    return [ext], {"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = extensions()

setup(
    name="pdiff_fast",
    version="0.1.0",
    description="Fast neural-network parameter diffusion (p-diff) on Triton and CUDA",
    long_description=open("README.md").read() if os.path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    packages=["pdiff_fast", "pdiff_fast.ops", "pdiff_fast.kernels"],
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
        "test": ["pytest", "pytest-benchmark", "hypothesis"],
    },
    entry_points={"console_scripts": ["pdiff-fast=pdiff_fast.cli:main"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
