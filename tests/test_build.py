"""The build decisions of setup.py (CUDA or not, nvcc / torch CUDA version check, OpenMP flags),
tested as plain functions: setup.py is imported under another name, so setup() does not run. No
real compiler runs: the OpenMP probe is given stand-in compilers (shell scripts)."""
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


def test_openmp_takes_the_first_flag_set_that_builds(build):
    tried = []

    def all_work(compile_flags, link_flags):
        tried.append((compile_flags, link_flags))
        return True

    assert build.openmp_flags(all_work, platform="linux") == (["-fopenmp"], ["-fopenmp"],
                                                              "OpenMP: '-fopenmp' (link '-fopenmp')")
    assert tried == [(["-fopenmp"], ["-fopenmp"])]  # nothing more is compiled once one works


def test_openmp_on_apple_clang_uses_xpreprocessor_and_libomp(build):
    def apple_clang(compile_flags, link_flags):  # rejects the -fopenmp driver flag
        return compile_flags[0] == "-Xpreprocessor"

    compile_flags, link_flags, why = build.openmp_flags(apple_clang, platform="darwin")
    assert compile_flags == ["-Xpreprocessor", "-fopenmp"] and link_flags == ["-lomp"]
    assert "-Xpreprocessor" in why


@pytest.mark.parametrize("platform", ["linux", "darwin"])
def test_no_openmp_when_no_flag_set_builds(build, platform):
    tried = []

    def none_work(compile_flags, link_flags):
        tried.append(compile_flags)
        return False

    compile_flags, link_flags, why = build.openmp_flags(none_work, platform=platform)
    assert compile_flags == [] and link_flags == []
    assert why.startswith("no OpenMP") and "one thread" in why
    # Apple clang's form is only tried on macOS; there the note says how to get libomp
    assert len(tried) == (2 if platform == "darwin" else 1)
    assert ("libomp" in why) == (platform == "darwin")


def _stand_in_compiler(tmp_path, accepts: str):
    """A 'compiler' that succeeds only when `accepts` is among its arguments and it was given an
    OpenMP source and an output path; it logs its arguments."""
    cxx = tmp_path / "fake-c++"
    log = tmp_path / "args.log"
    cxx.write_text(
        "#!/bin/sh\n"
        f"echo \"$@\" > '{log}'\n"
        "ok=1; src=''\n"
        "for a in \"$@\"; do\n"
        f"  [ \"$a\" = '{accepts}' ] && ok=0\n"
        "  case \"$a\" in *.cpp) src=\"$a\";; esac\n"
        "done\n"
        "grep -q 'pragma omp parallel' \"$src\" || exit 2\n"
        "exit $ok\n")
    cxx.chmod(0o755)
    return str(cxx), log


def test_openmp_probe_compiles_and_links_with_the_given_flags(build, tmp_path):
    cxx, log = _stand_in_compiler(tmp_path, accepts="-fopenmp")
    assert build.compiles_openmp(cxx, ["-fopenmp"], ["-fopenmp"], env={})
    args = log.read_text().split()
    # compile flags, then the source and output, then the link flags
    assert args[0] == "-fopenmp" and args[-1] == "-fopenmp" and "-o" in args
    assert not build.compiles_openmp(cxx, ["-qopenmp"], [], env={})  # flags this compiler rejects
    # the flags the build itself takes from the environment (a keg-only libomp's paths) reach the probe
    cxx, log = _stand_in_compiler(tmp_path, accepts="-lomp")
    assert build.compiles_openmp(cxx, ["-Xpreprocessor", "-fopenmp"], ["-lomp"],
                                 env={"CPPFLAGS": "-I/opt/libomp/include", "LDFLAGS": "-L/opt/libomp/lib"})
    args = log.read_text().split()
    assert args.index("-I/opt/libomp/include") < args.index("-Xpreprocessor")
    assert args.index("-L/opt/libomp/lib") < args.index("-lomp")


def test_openmp_probe_with_a_missing_compiler_says_no(build, tmp_path):
    assert not build.compiles_openmp(str(tmp_path / "no-such-c++"), ["-fopenmp"], ["-fopenmp"], env={})


def test_openmp_flags_are_not_fixed_in_the_base_flags(build):
    # they come from the probe, so a compiler without OpenMP still builds
    assert not any("openmp" in f for f in build.CXX_FLAGS)


def test_no_fast_math_and_no_pinned_std(build):
    # --use_fast_math flushes denormals to zero (breaks the bit-exact casts); torch picks -std itself
    flags = build.CXX_FLAGS + build.NVCC_FLAGS
    assert "--use_fast_math" not in flags
    assert not any(f.startswith("-std=") for f in flags)


def test_setup_runs_only_as_main(build):
    # importing setup.py must not have built or installed anything
    assert not hasattr(build, "ext_modules")
    assert os.path.basename(build.__file__) == "setup.py"
