"""Selection rules of pdiff_fast.backend.choose (tests/conftest.py sets TRITON_INTERPRET=1, so
"triton" can run on CPU tensors here)."""
import pytest
import torch

from pdiff_fast import backend
from pdiff_fast.backend import choose, use_backend
from pdiff_fast.ops.act_norm_conv1d import act_norm_conv1d

CPU = torch.device("cpu")


def test_auto_never_runs_the_triton_interpreter():
    assert choose("ddpm_step", CPU) == "torch"


def test_explicit_backend_the_op_has_is_used():
    with use_backend("triton"):
        assert choose("ddpm_step", CPU) == "triton"
    with use_backend("torch"):
        assert choose("ddpm_step", CPU) == "torch"


def test_explicit_backend_the_op_lacks_runs_torch():
    with use_backend("triton"):  # e.g. a pipeline under use_backend("triton"): flatten has no Triton kernel
        assert choose("flatten_params", CPU) == "torch"


def test_explicit_backend_that_cannot_run_raises(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with use_backend("triton"), pytest.raises(RuntimeError, match="need CUDA tensors"):
        choose("ddpm_step", CPU)


def test_auto_false_leaves_the_call_to_torch_but_an_explicit_backend_still_applies():
    with use_backend("auto"):
        assert choose("act_norm_conv1d", CPU, auto=False) == "torch"
    with use_backend("triton"):
        assert choose("act_norm_conv1d", CPU, auto=False) == "triton"


def test_environment_variable_and_context_order(monkeypatch):
    monkeypatch.setenv(backend.ENV_VAR, "triton")
    assert choose("ddpm_step", CPU) == "triton"
    with use_backend("torch"):  # the context manager is stronger
        assert choose("ddpm_step", CPU) == "torch"
    monkeypatch.setenv(backend.ENV_VAR, "cuda")
    with pytest.raises(ValueError, match="is not a backend"):
        choose("ddpm_step", CPU)
    with pytest.raises(ValueError, match="unknown backend"):
        with use_backend("fast"):
            pass


def test_act_norm_conv1d_trains_on_torch_under_auto(monkeypatch):
    """With autograd recording, auto asks for torch (auto=False); without, for the fast path."""
    asked = []
    real = backend.choose

    def spy(op, device, *, auto=True):
        asked.append(auto)
        return real(op, device, auto=auto)

    monkeypatch.setattr(backend, "choose", spy)
    x, w = torch.randn(2, 3, 8), torch.randn(4, 3, 3)
    with torch.no_grad():
        act_norm_conv1d(x, w, None)
    act_norm_conv1d(x, w.requires_grad_(), None)
    act_norm_conv1d(x, w.detach(), None)  # no input needs a gradient: nothing to train
    assert asked == [True, False, True]


def test_unregistered_op_is_a_clear_error():
    with pytest.raises(KeyError, match="not a registered op"):
        choose("conv9d", CPU)


def test_every_dispatching_op_is_registered():
    """The ops that pdiff_fast/ops dispatch are exactly the registered ones."""
    import pathlib
    import re

    ops_dir = pathlib.Path(backend.__file__).parent / "ops"
    named = set()
    for path in ops_dir.glob("*.py"):
        named |= set(re.findall(r'backend\.choose\(\s*"(\w+)"', path.read_text()))
    assert named == set(backend.FAST_BACKENDS)


def test_imports_are_done_once_and_failures_name_the_error(monkeypatch):
    monkeypatch.setattr(backend, "_imports", {})
    assert backend.load_triton_op("ddpm_step") is backend.load_triton_op("ddpm_step")
    missing = backend.load_triton_op("conv9d")
    assert isinstance(missing, ImportError) and backend.load_triton_op("conv9d") is missing
    assert "could not be imported" in backend._problem("triton", "conv9d", CPU)


def test_choose_traces_under_torch_compile_and_a_change_recompiles(monkeypatch):
    """fullgraph: no importlib in the traced code; use_backend and the environment are guarded."""
    @torch.compile(fullgraph=True, backend="eager")
    def picked(x):
        return x + (1.0 if choose("ddpm_step", x.device) == "triton" else 0.0)

    x = torch.zeros(1)
    with use_backend("torch"):
        assert picked(x).item() == 0.0
    with use_backend("triton"):
        assert picked(x).item() == 1.0
    monkeypatch.setenv(backend.ENV_VAR, "triton")
    assert picked(x).item() == 1.0
    monkeypatch.setenv(backend.ENV_VAR, "torch")
    assert picked(x).item() == 0.0
