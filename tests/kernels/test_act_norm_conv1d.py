"""kernels/act_norm_conv1d.py against pdiff_fast.ops.act_norm_conv1d.act_norm_conv1d_torch
(output and every gradient, reference in float64), and the autoencoder / denoiser modules under
backend 'triton' vs 'torch'.

Runs on CUDA when present, else on CPU tensors in Triton's interpreter (small sizes).
"""
import contextlib
import types

import torch

# tests/conftest.py sets TRITON_INTERPRET=1 before triton is imported when there is no GPU

import pytest  # noqa: E402

pytest.importorskip("triton")

from pdiff_fast import backend  # noqa: E402
from pdiff_fast.ops.act_norm_conv1d import act_norm_conv1d_torch  # noqa: E402

kmod = backend.load_triton_op("act_norm_conv1d")
if isinstance(kmod, Exception):
    raise kmod
from pdiff_fast.kernels import act_norm_conv1d_stats as stats_mod, launch  # noqa: E402  (after the op loaded)
from pdiff_fast.kernels import act_norm_conv1d_weight_grad as wgrad_mod  # noqa: E402

device = torch.device("cpu" if backend.triton_interpreted() or not torch.cuda.is_available() else "cuda")

# (dtype, atol, rtol) against the float64 reference; atol is scaled by the reference's magnitude.
# bf16 only on CUDA: the interpreter's bf16 tl.dot gives garbage (triton 3.9).
TOLERANCES = {"fp32": (torch.float32, 1e-4, 1e-4), "fp16": (torch.float16, 3e-2, 3e-2)}
if device.type == "cuda":
    TOLERANCES["bf16"] = (torch.bfloat16, 1e-1, 1e-1)
HALF_CASES = ["non_aligned_channels", "non_aligned_transposed", "ae_enc_last_tanh", "denoiser_time_add",
              "denoiser_block_condition"]

# name: (B, Cin, Cout, L, K, stride, padding, transposed, pre_act, add, residual, post_tanh)
# add: None, "b1l" = (B, 1, L) per-sample time embedding, "11l" = (1, 1, L) shared one,
# "bcl" = (B, Cin, L) per-sample, per-channel (the task condition of conditional.py's "blocks" mode)
CASES = {
    "minimal": (1, 1, 1, 7, 3, 1, 0, False, False, None, False, False),
    "ae_enc_first_p1": (3, 1, 2, 30, 3, 1, 1, False, False, None, False, False),
    "ae_enc_fold3": (3, 2, 2, 30, 3, 3, 0, False, True, None, False, False),
    "ae_enc_last_tanh": (3, 2, 5, 13, 3, 3, 0, False, True, None, False, True),
    "ae_enc_fold5_k5": (1, 5, 2, 30, 5, 5, 0, False, True, None, False, False),
    "ae_dec_transposed_s3": (3, 2, 5, 7, 3, 3, 0, True, True, None, False, False),
    "ae_dec_transposed_s5_k5": (1, 5, 2, 7, 5, 5, 0, True, True, None, False, False),
    "ae_dec_out_p4_k5": (3, 2, 1, 13, 5, 1, 4, False, True, None, False, False),
    "ae_dec_out_p5_k5": (1, 2, 1, 7, 5, 1, 5, False, True, None, False, False),
    "denoiser_time_add": (3, 5, 5, 12, 3, 1, 1, False, False, "b1l", False, False),
    "denoiser_shared_time": (3, 5, 2, 13, 3, 1, 1, False, True, "11l", False, False),
    "denoiser_block_condition": (3, 7, 5, 13, 3, 1, 1, False, True, "bcl", True, False),
    "denoiser_skip": (3, 5, 5, 12, 3, 1, 1, False, True, None, True, False),
    "non_aligned_channels": (3, 37, 70, 13, 3, 1, 1, False, True, "b1l", True, True),
    "non_aligned_transposed": (3, 17, 19, 7, 5, 3, 1, True, True, "11l", True, True),
    "strided_padded": (3, 5, 2, 30, 5, 3, 1, False, True, None, True, False),
    "stride_above_kernel": (1, 2, 3, 13, 3, 5, 1, False, True, None, False, False),
    "long_row_split_stats": (1, 2, 3, 2100, 3, 3, 0, False, True, None, False, False),
    "batch_1000": (1000, 2, 3, 7, 3, 1, 1, False, True, "b1l", True, False),
    "batch_1000_transposed": (1000, 2, 3, 7, 3, 3, 0, True, True, None, False, True),
}


def _conv_precision_api():
    """torch.backends.cudnn.conv where torch has the fp32_precision API, else None."""
    conv = getattr(torch.backends.cudnn, "conv", None)
    return conv if conv is not None and hasattr(conv, "fp32_precision") else None


@pytest.fixture(autouse=True)
def _no_tf32():
    """Compare fp32 dots in full precision on CUDA (the kernels follow torch's conv TF32 setting).
    Set through the fp32_precision API where torch has it: reading allow_tf32 raises once the two
    APIs were mixed."""
    conv = _conv_precision_api()
    if conv is not None:
        saved = conv.fp32_precision
        conv.fp32_precision = "ieee"
        yield
        conv.fp32_precision = saved
    else:
        saved = torch.backends.cudnn.allow_tf32
        torch.backends.cudnn.allow_tf32 = False
        yield
        torch.backends.cudnn.allow_tf32 = saved


def make_inputs(case, seed=0):
    B, Cin, Cout, L, K, stride, padding, transposed, pre_act, add, residual, post_tanh = case
    gen = torch.Generator().manual_seed(seed)
    w_shape = (Cin, Cout, K) if transposed else (Cout, Cin, K)
    Lout = (L - 1) * stride - 2 * padding + K if transposed else (L + 2 * padding - K) // stride + 1
    tensors = {
        "x": torch.randn(B, Cin, L, generator=gen) * 2 + 0.5,
        "weight": torch.randn(w_shape, generator=gen) / (Cin * K) ** 0.5,
        "bias": torch.randn(Cout, generator=gen),
    }
    if add is not None:
        shape = {"b1l": (B, 1, L), "11l": (1, 1, L), "bcl": (B, Cin, L)}[add]
        tensors["add"] = torch.randn(shape, generator=gen)
    if residual:
        tensors["residual"] = torch.randn(B, Cout, Lout, generator=gen)
    kwargs = dict(stride=stride, padding=padding, transposed=transposed, pre_act=pre_act, post_tanh=post_tanh)
    grad_out = torch.randn(B, Cout, Lout, generator=gen)
    return tensors, kwargs, grad_out


@contextlib.contextmanager
def one_torch_thread():
    """torch's float64 CPU conv backward can spin for seconds on a busy machine with several
    threads; the reference is tiny, so it runs on one."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def run(fn, tensors, kwargs, grad_out, dtype, dev):
    leaves = {k: v.to(device=dev, dtype=dtype).requires_grad_(True) for k, v in tensors.items()}
    args = dict(leaves)
    with one_torch_thread() if dev == "cpu" else contextlib.nullcontext():
        y = fn(args.pop("x"), args.pop("weight"), args.pop("bias"), **args, **kwargs)
        grads = torch.autograd.grad(y, list(leaves.values()), grad_out.to(device=dev, dtype=dtype))
    return y, dict(zip(leaves, grads))


def assert_matches_reference(case, dtype=torch.float32, atol=1e-4, rtol=1e-4, seed=0):
    tensors, kwargs, grad_out = make_inputs(case, seed)
    # the reference sees the inputs the kernel sees, rounded to dtype: in bf16, x + add rounded
    # from fp32 can land on the other side of 0 than the unrounded sum and flip leaky_relu's slope
    tensors = {k: v.to(dtype) for k, v in tensors.items()}
    grad_out = grad_out.to(dtype)
    y, grads = run(kmod.act_norm_conv1d, tensors, kwargs, grad_out, dtype, device)
    y_ref, grads_ref = run(act_norm_conv1d_torch, tensors, kwargs, grad_out, torch.float64, "cpu")
    assert y.dtype == dtype and y.shape == y_ref.shape
    for name, got, want in [("y", y, y_ref)] + [(k, grads[k], grads_ref[k]) for k in grads_ref]:
        assert got.shape == want.shape, name
        assert torch.isfinite(got).all(), f"{name} has non-finite values"
        scale = max(1.0, want.abs().max().item())
        torch.testing.assert_close(got.detach().cpu().double(), want.detach(), atol=atol * scale, rtol=rtol,
                                   msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_forward_and_gradients_match_reference(case):
    assert_matches_reference(case, *TOLERANCES["fp32"])


@pytest.mark.parametrize("dtype", [k for k in TOLERANCES if k != "fp32"])
@pytest.mark.parametrize("name", HALF_CASES)
def test_half_precision(name, dtype):
    assert_matches_reference(CASES[name], *TOLERANCES[dtype])


@pytest.mark.parametrize("name", ["non_aligned_transposed", "strided_padded", "batch_1000", "ae_enc_last_tanh"])
def test_every_output_element_is_written(name, monkeypatch):
    """All buffers the launchers allocate start as NaN: any element a kernel skips shows up."""
    calls = {"alloc": 0, "target_programs": 0}

    def nan_alloc(shape, dtype, dev):
        calls["alloc"] += 1
        return torch.full(shape if isinstance(shape, tuple) else (shape,), float("nan"), dtype=dtype, device=dev)

    def many_programs(dev):
        calls["target_programs"] += 1
        return 64  # force split reductions

    monkeypatch.setattr(launch, "alloc", nan_alloc)
    monkeypatch.setattr(launch, "target_programs", many_programs)
    monkeypatch.setattr(stats_mod, "ROW_TILE", 16)  # and several tiles per row
    assert_matches_reference(CASES[name])
    # the launchers look the helpers up through `launch`, so the patches above took effect
    assert calls["alloc"] > 0 and calls["target_programs"] > 0
    assert stats_mod.row_tiles(64, 1)[2] == 4  # 64 / 16: rows split into tiles of the patched size


def test_split_reductions_match_single_program(monkeypatch):
    """Splitting the statistics, weight-grad, bias and norm reductions over many programs (and
    rows over many tiles) changes nothing beyond rounding."""
    case = (3, 5, 4, 300, 3, 1, 1, False, True, "b1l", True, False)
    tensors, kwargs, grad_out = make_inputs(case)
    y1, g1 = run(kmod.act_norm_conv1d, tensors, kwargs, grad_out, torch.float32, device)
    monkeypatch.setattr(launch, "target_programs", lambda dev: 64)
    monkeypatch.setattr(stats_mod, "ROW_TILE", 32)  # 10 tiles per row
    y2, g2 = run(kmod.act_norm_conv1d, tensors, kwargs, grad_out, torch.float32, device)
    torch.testing.assert_close(y1, y2, atol=1e-5, rtol=1e-5)
    for k in g1:
        torch.testing.assert_close(g1[k], g2[k], atol=1e-5, rtol=1e-5)


def test_partial_gradients_and_strided_input():
    """Non-contiguous x, only some inputs requiring grad, no bias, a 2-D add."""
    gen = torch.Generator().manual_seed(3)
    x_full = torch.randn(13, 3, 4, generator=gen)  # x = x_full.permute(2, 1, 0): (4, 3, 13), strided
    w = torch.randn(2, 3, 3, generator=gen)
    add = torch.randn(1, 13, generator=gen)  # broadcasts to (4, 3, 13)
    g = torch.randn(4, 2, 13, generator=gen)
    xt = x_full.to(device).permute(2, 1, 0)
    at = add.to(device).requires_grad_(True)
    y = kmod.act_norm_conv1d(xt, w.to(device), None, padding=1, pre_act=True, add=at)
    (da,) = torch.autograd.grad(y, [at], g.to(device))
    ar = add.double().requires_grad_(True)
    yr = act_norm_conv1d_torch(x_full.double().permute(2, 1, 0), w.double(), None, padding=1, pre_act=True, add=ar)
    (dar,) = torch.autograd.grad(yr, [ar], g.double())
    torch.testing.assert_close(y.cpu().double(), yr, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(da.cpu().double(), dar, atol=1e-4, rtol=1e-4)


def test_bad_shapes_raise():
    x = torch.randn(2, 3, 5, device=device)
    with pytest.raises(ValueError):
        kmod.act_norm_conv1d(x, torch.randn(4, 2, 3, device=device), None)  # wrong Cin
    with pytest.raises(ValueError):
        kmod.act_norm_conv1d(x, torch.randn(4, 3, 7, device=device), None)  # kernel longer than input


def _module_outputs_and_grads(model, fn):
    model.zero_grad(set_to_none=True)
    out = fn(model)
    out.backward(torch.linspace(-1, 1, out.numel(), device=out.device).view_as(out))
    return out.detach(), {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _compare_backends(model, fn, atol=1e-4, rtol=1e-4):
    with backend.use_backend("torch"), one_torch_thread():
        out_ref, grads_ref = _module_outputs_and_grads(model, fn)
    with backend.use_backend("triton"):
        out, grads = _module_outputs_and_grads(model, fn)
    torch.testing.assert_close(out, out_ref, atol=atol, rtol=rtol)
    assert grads.keys() == grads_ref.keys() and grads
    for n in grads_ref:
        scale = max(1.0, grads_ref[n].abs().max().item())
        torch.testing.assert_close(grads[n], grads_ref[n], atol=atol * scale, rtol=rtol, msg=lambda m, n=n: f"{n}: {m}")


def test_autoencoder_triton_matches_torch():
    from pdiff_fast.autoencoder import small

    model = small(200).to(device)
    x = torch.randn(3, 200, device=device)
    _compare_backends(model, lambda m: m.decode(m.encode(x)))


def test_denoiser_triton_matches_torch():
    from pdiff_fast.denoiser import AE_CNN_bottleneck

    model = AE_CNN_bottleneck(12, channel_list=[4, 8, 8, 16]).to(device)
    x = torch.randn(5, 12, device=device)
    t = torch.randint(0, 1000, (5,), device=device)
    _compare_backends(model, lambda m: m(x, t))


def _tf32_settings():
    """Every setting the TF32 tests change, to put back: the fp32_precision levels where torch has
    them (reading allow_tf32 may raise there), else the allow_tf32 flag."""
    conv = _conv_precision_api()
    if conv is None:
        return torch.backends.cudnn.allow_tf32
    levels = [conv, torch.backends.cudnn.rnn, torch.backends.cudnn, torch.backends]
    return [(level, level.fp32_precision) for level in levels if hasattr(level, "fp32_precision")]


def _restore_tf32_settings(saved):
    if isinstance(saved, bool):
        torch.backends.cudnn.allow_tf32 = saved
        return
    for level, value in reversed(saved):  # the global level first: setting it may reach the others
        level.fp32_precision = value


def test_dot_precision_follows_torch_conv_tf32_setting(monkeypatch):
    cuda, cpu = torch.device("cuda"), torch.device("cpu")  # only the device type is read
    assert launch.dot_precision(torch.float16, cpu) == "tf32"  # 16-bit operands ignore it
    assert launch.dot_precision(torch.float32, cpu) == "ieee"
    assert launch.dot_precision(torch.float32, cuda) == "ieee"  # the autouse fixture turned TF32 off
    conv = _conv_precision_api()
    saved = _tf32_settings()
    try:
        if conv is not None:  # the fp32_precision API
            cudnn = torch.backends.cudnn
            conv.fp32_precision = "tf32"
            assert launch.dot_precision(torch.float32, cuda) == "tf32"
            # conv and RNN set differently (recent torch raises on reading allow_tf32 then)
            conv.fp32_precision, cudnn.rnn.fp32_precision = "ieee", "tf32"
            assert launch.dot_precision(torch.float32, cuda) == "ieee"
            if hasattr(cudnn, "fp32_precision") and hasattr(torch.backends, "fp32_precision"):
                # "none" inherits: conv -> cudnn -> the global setting
                conv.fp32_precision, cudnn.fp32_precision = "none", "tf32"
                assert launch.dot_precision(torch.float32, cuda) == "tf32"
                cudnn.fp32_precision, torch.backends.fp32_precision = "none", "tf32"
                assert launch.dot_precision(torch.float32, cuda) == "tf32"
                torch.backends.fp32_precision = "ieee"
                assert launch.dot_precision(torch.float32, cuda) == "ieee"
        # older torch: only the allow_tf32 flag (its setter sets conv and RNN alike)
        monkeypatch.setattr(torch.backends.cudnn, "conv", types.SimpleNamespace(), raising=False)
        torch.backends.cudnn.allow_tf32 = False
        assert launch.dot_precision(torch.float32, cuda) == "ieee"
        torch.backends.cudnn.allow_tf32 = True
        assert launch.dot_precision(torch.float32, cuda) == "tf32"
    finally:
        _restore_tf32_settings(saved)


class _LaunchCounter:
    """Stands in for a @triton.jit kernel: counts launches, then launches the real one."""

    def __init__(self, kernel):
        self.kernel, self.launches = kernel, 0

    def __getitem__(self, grid):
        self.launches += 1
        return self.kernel[grid]


def _forward_inputs(B, L, gen):
    x = torch.randn(B, 7, L, generator=gen) * 2 + 1
    w = torch.randn(5, 7, 3, generator=gen) / 4
    b = torch.randn(5, generator=gen)
    add = torch.randn(B, 1, L, generator=gen)
    res = torch.randn(B, 5, L, generator=gen)
    return x, w, b, add, res


@pytest.mark.parametrize("L, row_tile, plain", [(13, None, True), (40, 16, False)], ids=["short_rows", "long_rows"])
def test_both_input_paths_match_reference(monkeypatch, L, row_tile, plain):
    """Short rows: the stats kernel writes h = norm(act(x + add)) and the conv runs its plain,
    pipelined loop on it; rows longer than a stats tile: the conv normalizes on load. Each path is
    checked against the reference, and so is which of the two ran."""
    if row_tile:
        monkeypatch.setattr(stats_mod, "ROW_TILE", row_tile)
    normalized_on_load = []
    conv = kmod._conv

    def spy(inp, *args, **kwargs):
        normalized_on_load.append(kwargs.get("mean") is not None)
        return conv(inp, *args, **kwargs)

    monkeypatch.setattr(kmod, "_conv", spy)
    x, w, b, add, res = _forward_inputs(3, L, torch.Generator().manual_seed(11))
    kw = dict(padding=1, pre_act=True)
    y = kmod.act_norm_conv1d(x.to(device), w.to(device), b.to(device), add=add.to(device), residual=res.to(device),
                             **kw)
    assert normalized_on_load == [not plain]
    ref = act_norm_conv1d_torch(x.double(), w.double(), b.double(), add=add.double(), residual=res.double(), **kw)
    torch.testing.assert_close(y.cpu().double(), ref, atol=1e-4, rtol=1e-4)


def test_batch_chunks_keep_int32_indices():
    """A whole network's K = 200 vectors at D ~ 11M pass 2^31 (b, position) pairs: the launches
    are split over the batch so that every flattened index, rounded up to whole tiles, fits int32."""
    assert launch.batch_chunks(1000, 12, 128) == [(0, 1000)]
    B, L, block = 200, 11_000_000, 512
    chunks = launch.batch_chunks(B, L, block)
    assert len(chunks) > 1 and chunks[0][0] == 0 and chunks[-1][1] == B
    assert all(a[1] == b[0] for a, b in zip(chunks, chunks[1:]))  # contiguous, no sample twice
    assert all((b1 - b0) * L + block <= launch.INDEX_LIMIT for b0, b1 in chunks)
    with pytest.raises(ValueError, match="too long for int32"):
        launch.batch_chunks(1, 2**31, block)


def test_int32_guard_splits_launches_and_matches_reference(monkeypatch):
    """With the index limit lowered to a few samples' worth, the forward conv, the adjoint conv and
    the weight gradient run as several launches over batch chunks, and every output and gradient
    still equals the reference."""
    # interpreter tiles: conv 128 columns (36 samples of 13 a launch), weight grad 512 (6 a launch)
    monkeypatch.setattr(launch, "INDEX_LIMIT", 600)
    counter = _LaunchCounter(kmod._conv_kernel)
    monkeypatch.setattr(kmod, "_conv_kernel", counter)
    wgrad = _LaunchCounter(wgrad_mod._weight_grad_kernel)
    monkeypatch.setattr(wgrad_mod, "_weight_grad_kernel", wgrad)
    x, w, b, add, res = _forward_inputs(40, 13, torch.Generator().manual_seed(12))
    g = torch.randn(40, 5, 13, generator=torch.Generator().manual_seed(13))
    leaves = [t.to(device).requires_grad_(True) for t in (x, w, b)]
    y = kmod.act_norm_conv1d(*leaves, padding=1, pre_act=True, add=add.to(device), residual=res.to(device))
    grads = torch.autograd.grad(y, leaves, g.to(device))
    assert counter.launches == 2 * 2 and wgrad.launches == 7  # forward + adjoint in 2 chunks; 7 chunks
    ref_leaves = [t.double().requires_grad_(True) for t in (x, w, b)]
    ref = act_norm_conv1d_torch(*ref_leaves, padding=1, pre_act=True, add=add.double(), residual=res.double())
    ref_grads = torch.autograd.grad(ref, ref_leaves, g.double())
    torch.testing.assert_close(y.detach().cpu().double(), ref, atol=1e-4, rtol=1e-4)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got.cpu().double(), want, atol=1e-3 * max(1.0, want.abs().max().item()), rtol=1e-4)


def test_gpu_tiles_fill_the_device_and_stay_in_the_compiled_table(monkeypatch):
    """The CUDA tile policy (picked here as for a 132-SM H100): the headline 512 x 512 denoiser conv
    at N = 1000 gets 128 x 128 tiles on 8 warps with 2 stages; a small conv narrows its tiles until
    the grid gives each SM two; normalize-on-load never exceeds 64 x 64 and is not pipelined (the
    shapes benchmarks/results/sm90_kernels.md shows without spills)."""
    monkeypatch.setattr(launch, "COMPILE_ONLY_SMS", 132)
    cpu = torch.device("cpu")
    assert kmod.conv_tiles(cpu, 12_000, 512, 512, plain=True) == (128, 128, 32, 8, 2)
    bo, bn, _, _, _ = kmod.conv_tiles(cpu, 12_000, 64, 64, plain=True)
    assert launch.cdiv(64, bo) * launch.cdiv(12_000, bn) >= 2 * 132
    bo, bn, _, warps, stages = kmod.conv_tiles(cpu, 2_500_000, 256, 256, plain=False)
    assert bo <= 64 and bn <= 64 and warps == 8 and stages == 1
    monkeypatch.setattr(launch, "COMPILE_ONLY_SMS", None)
    assert kmod.conv_tiles(cpu, 12_000, 512, 512, plain=True)[3:] == (4, 1)  # interpreter: one stage


def test_a_nearly_constant_channel_sees_the_instance_norm_eps(monkeypatch):
    """Random inputs of variance ~4 hide eps (1e-5); a channel of variance 1e-6 does not: there the
    normalised values depend on eps by a factor ~3, so a kernel with another eps fails."""
    from torch import nn

    from pdiff_fast.ops.act_norm_conv1d import EPS

    assert EPS == nn.InstanceNorm1d(1).eps  # the reference's modules use the default
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(2, 3, 12, generator=gen)
    x[:, 1] = 0.3 + 1e-3 * torch.randn(2, 12, generator=gen)
    w, b = torch.randn(4, 3, 3, generator=gen) / 3, torch.randn(4, generator=gen)
    y = kmod.act_norm_conv1d(x.to(device), w.to(device), b.to(device), padding=1)
    ref = act_norm_conv1d_torch(x.double(), w.double(), b.double(), padding=1)
    torch.testing.assert_close(y.detach().cpu().double(), ref, atol=1e-4, rtol=1e-4)
    import sys

    ops_mod = sys.modules["pdiff_fast.ops.act_norm_conv1d"]  # the package exports a function of that name
    monkeypatch.setattr(ops_mod, "EPS", EPS / 10)  # the case is sensitive: eps / 10 moves it by far more
    assert (act_norm_conv1d_torch(x.double(), w.double(), b.double(), padding=1) - ref).abs().max() > 1e-2
