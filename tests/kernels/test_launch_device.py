"""kernels/launch.on_input_device: Triton launches on the current CUDA device, so the public
launchers switch to their input's device when it is another GPU (checked here with a stand-in for
torch.cuda's device calls: there is one GPU or none wherever the suite runs)."""
import contextlib
import types

import pytest
import torch

pytest.importorskip("triton")

from pdiff_fast import backend  # noqa: E402

for _op in ("act_norm_conv1d", "ddpm_step", "ddim_step", "q_sample", "eps_mse"):
    backend.load_triton_op(_op)
from pdiff_fast.kernels import launch  # noqa: E402


def _fake_cuda(monkeypatch, current: int) -> list:
    switched = []

    @contextlib.contextmanager
    def device(d):
        switched.append(d.index)
        yield

    monkeypatch.setattr(torch.cuda, "current_device", lambda: current)
    monkeypatch.setattr(torch.cuda, "device", device)
    return switched


@pytest.mark.parametrize("index, current, switch", [(1, 0, [1]), (0, 0, []), (None, 0, [])])
def test_launcher_runs_on_its_inputs_device(monkeypatch, index, current, switch):
    switched = _fake_cuda(monkeypatch, current)
    seen = []
    launcher = launch.on_input_device(lambda x, y, *, z: seen.append((x, y, z)) or "out")
    x = types.SimpleNamespace(device=torch.device("cuda", index) if index is not None else torch.device("cuda"))
    assert launcher(x, 2, z=3) == "out" and seen == [(x, 2, 3)]
    assert switched == switch


def test_cpu_inputs_never_touch_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "current_device", lambda: pytest.fail("asked CUDA for a CPU tensor"))
    assert launch.on_input_device(lambda x: 7)(torch.zeros(1)) == 7


@pytest.mark.parametrize("op", ["act_norm_conv1d", "ddpm_step", "ddim_step", "q_sample", "eps_mse"])
def test_every_public_launcher_is_guarded(op):
    fn = getattr(backend.load_triton_op(op), op)
    assert fn.__code__ is launch.on_input_device(lambda x: x).__code__, f"{op} is not wrapped by on_input_device"
