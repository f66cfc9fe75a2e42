"""pytest set-up of the throughput suite (pytest-benchmark).

    pytest benchmarks/                          # default sizes: a few minutes on a 2-core CPU
    pytest benchmarks/ --full                   # full sizes: every N, 1000 DDPM steps (for a GPU)
    pytest benchmarks/ -m quick --benchmark-disable   # CI smoke run
    pytest benchmarks/ --benchmark-json=benchmarks/results/cpu.json && python benchmarks/report.py ...

Options: --full, --threads N (CPU threads for torch; default 1 without a GPU, 0 = torch's
default), --no-compile (skip the torch.compile peer). Tests get `cfg_name`, `n` and `peer`
parametrised here from the sizes of the run (benchmarks/common.py).

On CUDA a session fixture measures the hardware floor inputs once (a 1 GiB device copy and an
8192^2 matmul) and every benchmark's extra_info carries them; on CPU there is no floor.
"""
from __future__ import annotations

import importlib.metadata
import os
import platform

import pytest
import torch

from . import common

_RUN: dict = {"hardware": {}, "skipped": []}


def pytest_addoption(parser):
    group = parser.getgroup("pdiff_fast benchmarks")
    group.addoption("--full", action="store_true", default=False,
                    help="full sizes: N in 1..1000, 1000 DDPM / 50 DDIM steps, K = 200, full widths")
    group.addoption("--threads", type=int, default=None,
                    help="torch CPU threads (default: 1 when there is no GPU, 0: leave torch's default)")
    group.addoption("--no-compile", action="store_true", default=False, help="skip the torch.compile peer")
    group.addoption("--n", default=None, help="comma-separated N values for every configuration (e.g. 1000)")
    group.addoption("--ddpm-steps", type=int, default=None, help="DDPM reverse steps per timed call")
    group.addoption("--ddim-steps", type=int, default=None, help="DDIM reverse steps per timed call")
    group.addoption("--configs", default=None, help="comma-separated configurations (resnet18, whole-net)")


def run_sizes(config) -> common.Sizes:
    """common.sizes narrowed by the command line."""
    def ints(text):
        return tuple(int(v) for v in text.split(",")) if text else None
    cfgs = config.getoption("--configs", default=None)
    return common.sizes(config.getoption("--full"), ns=ints(config.getoption("--n", default=None)),
                        ddpm_steps=config.getoption("--ddpm-steps", default=None),
                        ddim_steps=config.getoption("--ddim-steps", default=None),
                        cfgs=tuple(cfgs.split(",")) if cfgs else None)


def pytest_configure(config):
    threads = config.getoption("--threads", default=None)
    if threads is None:  # a shared 2-core box: OpenMP spin-waits make 2-thread timings swing 5-100x
        threads = 0 if torch.cuda.is_available() else 1
    if threads > 0:
        torch.set_num_threads(threads)
    common.OPTIONS["compile"] = not config.getoption("--no-compile", default=False)
    dyn = torch._dynamo.config  # many modules and shapes are compiled in one process
    for name in ("cache_size_limit", "recompile_limit", "accumulated_cache_size_limit",
                 "accumulated_recompile_limit"):
        if hasattr(dyn, name):
            setattr(dyn, name, max(getattr(dyn, name), 256))


def _explicit(metafunc, name: str) -> bool:
    for mark in metafunc.definition.iter_markers("parametrize"):
        names = mark.args[0]
        names = [x.strip() for x in names.split(",")] if isinstance(names, str) else list(names)
        if name in names:
            return True
    return False


def pytest_generate_tests(metafunc):
    sizes = run_sizes(metafunc.config)
    names = list(sizes.ns)
    fixtures = metafunc.fixturenames
    if "cfg_name" in fixtures and "n" in fixtures and not _explicit(metafunc, "cfg_name"):
        cases = [(c, n) for c in names for n in sizes.ns[c]]
        metafunc.parametrize(("cfg_name", "n"), cases, ids=[f"{c}-N{n}" for c, n in cases])
    elif "cfg_name" in fixtures and not _explicit(metafunc, "cfg_name"):
        metafunc.parametrize("cfg_name", names)
    if "peer" in fixtures and not _explicit(metafunc, "peer"):
        metafunc.parametrize("peer", common.PEERS)


@pytest.fixture(scope="session")
def sizes(request) -> common.Sizes:
    return run_sizes(request.config)


@pytest.fixture(scope="session")
def device() -> torch.device:
    return common.default_device()


@pytest.fixture(scope="session")
def setup_for(request, device):
    """cfg_name -> common.Setup, built once per session."""
    cfgs = common.configs(request.config.getoption("--full"))
    built: dict[str, common.Setup] = {}

    def get(name: str) -> common.Setup:
        if name not in built:
            built[name] = common.Setup(cfgs[name], device)
        return built[name]

    return get


def measure_hardware(device: torch.device) -> dict:
    """On CUDA: device-copy bandwidth and matmul FLOP rates (fp32 and TF32), best of 5. On CPU: {}."""
    if device.type != "cuda":
        return {}

    def best(fn, reps=5):
        fn()
        torch.cuda.synchronize()
        times = []
        for _ in range(reps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        return min(times)

    n = 1 << 28  # 1 GiB of fp32
    src, dst = torch.empty(n, device=device), torch.empty(n, device=device)
    copy_s = best(lambda: dst.copy_(src))
    del src, dst
    m = 8192
    a, b = torch.randn(m, m, device=device), torch.randn(m, m, device=device)
    old = torch.backends.cuda.matmul.allow_tf32
    rates = {}
    try:
        for tf32 in (False, True):
            torch.backends.cuda.matmul.allow_tf32 = tf32
            rates["tf32" if tf32 else "fp32"] = 2 * m**3 / best(lambda: a @ b)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old
    del a, b
    torch.cuda.empty_cache()
    return {"hw_device": torch.cuda.get_device_name(device), "hw_copy_bytes_per_s": 2 * 4 * n / copy_s,
            "hw_matmul_fp32_flops_per_s": rates["fp32"], "hw_matmul_tf32_flops_per_s": rates["tf32"]}


@pytest.fixture(scope="session")
def hardware(device) -> dict:
    _RUN["hardware"] = measure_hardware(device)
    return _RUN["hardware"]


@pytest.fixture(autouse=True)
def _hardware_extra_info(request):
    """Every benchmark carries the floor inputs measured in this run (nothing on CPU)."""
    if "benchmark" in request.fixturenames:
        hw = request.getfixturevalue("hardware")
        if hw:
            request.getfixturevalue("benchmark").extra_info.update(hw)
    yield


def environment(config=None) -> dict:
    cpu = common.cpu_model()
    try:
        triton = importlib.metadata.version("triton")
    except importlib.metadata.PackageNotFoundError:
        triton = None
    env = {"cpu_model": cpu, "cpu_cores": os.cpu_count(), "torch": torch.__version__, "triton": triton,
           "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
           "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
           "mode": "full" if config is not None and config.getoption("--full") else "default",
           "compile_peer": common.OPTIONS["compile"]}
    try:
        import pdiff_fast
        env["pdiff_fast"] = pdiff_fast.__version__
    except Exception:  # noqa: BLE001
        pass
    return env


def pytest_runtest_logreport(report):
    if report.skipped and report.when in ("setup", "call"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        _RUN["skipped"].append({"test": report.nodeid, "reason": reason.removeprefix("Skipped: ")})


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["pdiff_fast"] = {**environment(config), **_RUN["hardware"]}


def pytest_benchmark_update_json(config, benchmarks, output_json):
    output_json["pdiff_fast"] = {"environment": environment(config), "hardware": _RUN["hardware"],
                                 "skipped": _RUN["skipped"]}
