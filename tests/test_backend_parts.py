"""pdiff_fast.backend's parts, value by value: the names, the registry, how the request is read
(context, environment, spelling), the import cache, the reasons a backend cannot run with their
messages in full, the dtypes Triton takes, and `choose` on a CUDA device with the kernels' and the
extension's availability faked (this machine has neither a GPU nor, necessarily, the kernels).
Written against the mutants mutmut left alive (tests/mutation, docs/mutation-scores.md)."""
import types
import warnings

import pytest
import torch

from pdiff_fast import backend
from pdiff_fast.backend import choose, use_backend

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.fixture(autouse=True)
def clean(monkeypatch):
    monkeypatch.delenv(backend.ENV_VAR, raising=False)
    monkeypatch.setattr(backend, "_warned", set())


def test_names_and_the_registry():
    assert backend.BACKENDS == ("auto", "torch", "triton", "ext") and backend.ENV_VAR == "PDIFF_FAST_BACKEND"
    assert backend.FAST_BACKENDS == {
        "act_norm_conv1d": ("triton",), "ddpm_step": ("triton",), "ddim_step": ("triton",),
        "solver_step": ("triton",), "q_sample": ("triton",), "eps_mse": ("triton",),
        "flatten_params": ("ext",), "unflatten_params": ("ext",), "unflatten_into": ("ext",),
        "iou_matrix": ("ext",), "norm_affine_act": ("ext",)}
    assert backend.TRITON_DTYPES == (torch.float32, torch.float16, torch.bfloat16)


def test_the_request_is_read_from_the_context_then_the_environment(monkeypatch):
    assert backend._requested() == "auto"
    for text, want in ((" Triton ", "triton"), ("EXT", "ext"), ("", "auto"), ("  ", "auto"), ("torch", "torch")):
        monkeypatch.setenv(backend.ENV_VAR, text)
        assert backend._requested() == want
    monkeypatch.setenv(backend.ENV_VAR, "Cuda")
    with pytest.raises(ValueError, match=r"^PDIFF_FAST_BACKEND='cuda' is not a backend; choose one of \('auto', "
                                         r"'torch', 'triton', 'ext'\)$"):
        backend._requested()
    with use_backend("torch"):  # the context wins, the environment is not read
        assert backend._requested() == "torch"


def test_use_backend_nests_and_restores():
    with use_backend("ext"):
        with use_backend("torch"):
            assert backend._requested() == "torch"
        assert backend._requested() == "ext"
    assert backend._requested() == "auto"
    with pytest.raises(RuntimeError):
        with use_backend("triton"):
            raise RuntimeError("inside")
    assert backend._requested() == "auto"  # restored after an error too
    with pytest.raises(ValueError, match=r"^unknown backend 'Torch'; choose one of \('auto', 'torch', 'triton', "
                                         r"'ext'\)$"):
        with use_backend("Torch"):
            pass


@pytest.mark.parametrize("value, want", [("1", True), ("0", False), ("true", False), ("", False), (None, False)])
def test_triton_interpreted_only_at_1(monkeypatch, value, want):
    if value is None:
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    else:
        monkeypatch.setenv("TRITON_INTERPRET", value)
    assert backend.triton_interpreted() is want


def test_imports_are_cached_by_module_name(monkeypatch):
    imported = []

    def import_module(name):
        imported.append(name)
        if name.endswith("conv9d"):
            raise ImportError(f"no {name}")
        return types.SimpleNamespace(name=name)

    monkeypatch.setattr(backend, "_imports", {})
    monkeypatch.setattr(backend.importlib, "import_module", import_module)
    assert backend.load_triton_op("ddpm_step").name == "pdiff_fast.kernels.ddpm_step"
    assert backend.load_extension().name == "pdiff_fast._C"
    err = backend.load_triton_op("conv9d")
    assert isinstance(err, ImportError) and backend.load_triton_op("conv9d") is err
    backend.load_triton_op("ddpm_step")
    assert imported == ["pdiff_fast.kernels.ddpm_step", "pdiff_fast._C", "pdiff_fast.kernels.conv9d"]
    assert backend._triton_import_error("conv9d") == "no pdiff_fast.kernels.conv9d"
    assert backend._triton_import_error("ddpm_step") == ""


@pytest.mark.parametrize("ext, cuda, want", [
    (ImportError("gone"), False, "the extension pdiff_fast._C is not built (gone)"),
    (ImportError("gone"), True, "the extension pdiff_fast._C is not built (gone)"),
    (types.SimpleNamespace(), True, "the extension was built without CUDA"),
    (types.SimpleNamespace(has_cuda=lambda: False), True, "the extension was built without CUDA"),
    (types.SimpleNamespace(has_cuda=lambda: True), True, ""),
    (types.SimpleNamespace(), False, ""),
])
def test_why_the_extension_cannot_run(monkeypatch, ext, cuda, want):
    monkeypatch.setattr(backend, "load_extension", lambda: ext)
    assert backend._extension_error(cuda) == want


def test_triton_dtypes():
    f32, f16, bf16, f64 = (torch.zeros(1, dtype=d) for d in (torch.float32, torch.float16, torch.bfloat16, torch.float64))
    assert backend.triton_dtypes(f32, f16, bf16, None)
    assert backend.triton_dtypes() and backend.triton_dtypes(None)
    assert not backend.triton_dtypes(f32, f64) and not backend.triton_dtypes(torch.zeros(1, dtype=torch.int64))


def fake(monkeypatch, triton="", ext=""):
    """The kernels' import error and the extension's problem, faked ("" when they can run)."""
    monkeypatch.setattr(backend, "_triton_import_error", lambda op: triton)
    monkeypatch.setattr(backend, "_extension_error", lambda cuda: ext if cuda else "")


def test_problems_and_their_messages(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    fake(monkeypatch, triton="no triton", ext="no CUDA build")
    assert backend._problem("triton", "ddpm_step", CPU) == ("Triton kernels need CUDA tensors (or TRITON_INTERPRET=1 "
                                                           "for CPU tensors)")
    assert backend._problem("triton", "ddpm_step", CUDA) == "its Triton kernel could not be imported (no triton)"
    assert backend._problem("ext", "iou_matrix", CUDA) == "no CUDA build"
    assert backend._problem("ext", "iou_matrix", CPU) is None
    assert backend._problem("torch", "iou_matrix", CPU) == "unknown backend 'torch'"
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert backend._problem("triton", "ddpm_step", CPU) == "its Triton kernel could not be imported (no triton)"
    fake(monkeypatch)
    assert backend._problem("triton", "ddpm_step", CUDA) is None and backend._problem("triton", "ddpm_step", CPU) is None


def test_auto_on_cuda_takes_the_fast_path_where_it_runs(monkeypatch):
    asked = []
    monkeypatch.setattr(backend, "_triton_import_error", lambda op: asked.append(op) or "")
    monkeypatch.setattr(backend, "_extension_error", lambda cuda: "")
    assert choose("ddpm_step", CUDA) == "triton" and choose("iou_matrix", CUDA) == "ext"
    assert choose("ddpm_step", CUDA, auto=False) == "torch"
    assert choose("iou_matrix", CPU) == "ext"
    assert asked == ["ddpm_step"]  # the op's own kernel is the one asked about


def test_a_thread_that_never_chose_a_backend_reads_the_environment(monkeypatch):
    import threading

    monkeypatch.setenv(backend.ENV_VAR, "torch")
    seen = []
    with use_backend("ext"):  # this thread's choice is not another thread's
        worker = threading.Thread(target=lambda: seen.append(backend._requested()))
        worker.start()
        worker.join()
    assert seen == ["torch"]


def test_auto_falls_back_with_one_warning(monkeypatch):
    fake(monkeypatch, triton="no triton", ext="no CUDA build")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert choose("ddpm_step", CUDA) == "torch" and choose("ddpm_step", CUDA) == "torch"
        assert choose("q_sample", CUDA) == "torch"
        assert choose("iou_matrix", CUDA) == "torch" and choose("flatten_params", CUDA) == "torch"
        assert choose("ddpm_step", CPU) == "torch"  # no warning on CPU: Triton is not for CPU tensors
    messages = [str(w.message) for w in caught]
    assert all(w.category is RuntimeWarning for w in caught)
    assert messages == ["pdiff_fast: ddpm_step falls back to PyTorch because its Triton kernel could not be "
                        "imported (no triton)",
                        "pdiff_fast: q_sample falls back to PyTorch because its Triton kernel could not be "
                        "imported (no triton)",
                        "pdiff_fast: falling back to PyTorch for the extension ops because no CUDA build"]
    assert backend._warned == {"ddpm_step", "q_sample", "ext"}


def test_auto_on_cpu_with_the_interpreter_does_not_warn(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    fake(monkeypatch, triton="no triton")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert choose("ddpm_step", CPU) == "torch"


def test_an_explicit_backend(monkeypatch):
    fake(monkeypatch, triton="no triton", ext="no CUDA build")
    with use_backend("ext"):
        assert choose("iou_matrix", CPU) == "ext"
        assert choose("ddpm_step", CUDA) == "torch"  # the op has no extension path
        with pytest.raises(RuntimeError, match=r"^backend 'ext' was requested for iou_matrix but no CUDA build$"):
            choose("iou_matrix", CUDA)
    with use_backend("triton"):
        with pytest.raises(RuntimeError, match=r"^backend 'triton' was requested for ddpm_step but its Triton kernel "
                                               r"could not be imported \(no triton\)$"):
            choose("ddpm_step", CUDA)
    fake(monkeypatch)
    with use_backend("triton"):
        assert choose("ddpm_step", CUDA, auto=False) == "triton"
    with use_backend("torch"):
        assert choose("iou_matrix", CUDA) == "torch"


def test_an_unregistered_op_names_the_registered_ones():
    with pytest.raises(KeyError, match=r"'conv9d' is not a registered op; registered: act_norm_conv1d, ddpm_step, "
                                       r"ddim_step, solver_step, q_sample, eps_mse, flatten_params, unflatten_params, "
                                       r"unflatten_into, iou_matrix, norm_affine_act"):
        choose("conv9d", CPU)
