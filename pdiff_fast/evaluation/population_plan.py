"""The stage planner of evaluate_population (pdiff_fast.evaluation.population): the model cut into a
chain of stages, a shared prefix and a per-model suffix, and the suffix run for a chunk of
models at once.

    plan = _plan(model, spec, probe)            # probe: two test samples, model in eval mode
    for st in plan.prefix: h = st.module(h)     # (B, ...) once per test batch, shared
    out = _run_suffix(plan, h, params, m)       # (m, B, K): params {name: (m, *shape)}

1. The chain: the children of an nn.Sequential (nested ones expanded), or the top-level
   children of any module whose forward is checked, with forward hooks on the probe batch, to
   call them one after the other. The stages before the first one that reads a generated
   parameter form the prefix. A model that is not such a chain (or ties a generated parameter
   to another name) is one stage, run whole under vmap.
2. The suffix runs stage by stage on (m, B, ...) activations: stages without generated
   parameters fold the model axis into the batch (one conv / linear call for m * B samples,
   same kernels as one model); a BatchNorm / LayerNorm whose affine is generated, and the
   ReLU / LeakyReLU / Identity after it, is one `norm_affine_act` call (pdiff_fast.ops); any
   other stage runs under torch.func.vmap(functional_call) with only the generated parameters
   batched.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from ..ops.norm_affine_act import norm_affine_act
from ..params import ParamSpec

# --- the model as a chain of stages ----------------------------------------------------------

_PER_SAMPLE = (
    nn.modules.conv._ConvNd, nn.Linear, nn.Identity, nn.Flatten, nn.Unflatten,
    nn.ReLU, nn.LeakyReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.ELU, nn.Softplus,
    nn.Hardtanh, nn.Hardswish, nn.Mish, nn.PReLU,
    nn.modules.dropout._DropoutNd, nn.Dropout,
    nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd,
    nn.modules.pooling._AdaptiveAvgPoolNd, nn.modules.pooling._AdaptiveMaxPoolNd,
    nn.LayerNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm,
    nn.MultiheadAttention, nn.TransformerEncoderLayer, nn.Sequential, nn.ModuleList,
    nn.modules.linear.NonDynamicallyQuantizableLinear,
)


def _per_sample(module: nn.Module) -> bool:
    """Whether the module (eval mode) treats every sample on its own, so the model axis can be
    folded into the batch. Conservative: known leaf types only."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            if m.running_mean is None:  # batch statistics even in eval mode
                return False
        elif isinstance(m, nn.Flatten):
            if m.start_dim == 0:
                return False
        elif not isinstance(m, _PER_SAMPLE) and any(True for _ in m.children()):
            continue  # a container: judged by its leaves
        elif not isinstance(m, _PER_SAMPLE):
            return False
    return True


def _is_plain_sequential(m: nn.Module) -> bool:
    return isinstance(m, nn.Sequential) and type(m).forward is nn.Sequential.forward


def _expand(name: str, module: nn.Module) -> list[tuple[str, nn.Module]]:
    if _is_plain_sequential(module):
        out = []
        for child_name, child in module.named_children():
            out += _expand(f"{name}.{child_name}" if name else child_name, child)
        return out
    return [(name, module)]


def _chain(model: nn.Module, probe: torch.Tensor) -> list[tuple[str, nn.Module]] | None:
    """The model's forward as a list of (qualified name, module) applied one after the other,
    or None when it is not such a chain."""
    if _is_plain_sequential(model):
        return _expand("", model)
    children = list(model.named_children())
    if not children:
        return None
    calls: list[tuple[str, tuple, object]] = []
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: calls.append((n, i, o)))
             for n, m in children]
    try:
        with torch.no_grad():
            out = model(probe)
    except Exception:
        return None
    finally:
        for h in hooks:
            h.remove()
    names = [n for n, _, _ in calls]
    if not calls or len(set(names)) != len(names):
        return None
    current = probe
    for _, inputs, output in calls:
        if len(inputs) != 1 or inputs[0] is not current:
            return None
        current = output
    if out is not current:
        return None
    called = dict(children)
    stages = []
    for n in names:
        stages += _expand(n, called[n])
    return stages


@dataclass
class _Stage:
    name: str
    module: nn.Module
    generated: dict[str, str]  # local parameter name -> full name, for the generated ones


@dataclass
class _Plan:
    prefix: list[_Stage]  # shared, run once per test batch
    suffix: list[_Stage]  # per model
    whole_model: bool  # not a chain: the suffix is the whole model under vmap
    per_sample: bool  # the suffix may run on sub-batches of a test batch
    pair_bytes: int  # activation bytes per (model, sample): the widest layer, input + output


def _widest_output(model: nn.Module, probe: torch.Tensor) -> int:
    """Largest number of values per sample that any module of the model outputs."""
    sizes = [probe[0].numel()]

    def record(module, inputs, output):
        if isinstance(output, torch.Tensor):
            sizes.append(output.numel() // max(1, probe.shape[0]))
    hooks = [m.register_forward_hook(record) for m in model.modules()]
    try:
        model(probe)
    finally:
        for h in hooks:
            h.remove()
    return max(sizes)


def _plan(model: nn.Module, spec: ParamSpec, probe: torch.Tensor) -> _Plan:
    generated = set(spec.names)
    names_of: dict[int, list[str]] = {}
    for n, p in model.named_parameters(remove_duplicate=False):
        names_of.setdefault(id(p), []).append(n)
    tied = any(len(ns) > 1 and generated.intersection(ns) for ns in names_of.values())
    pair_bytes = 2 * _widest_output(model, probe) * probe.element_size()
    chain = None if tied else _chain(model, probe)
    if chain is not None:
        stages = []
        for n, m in chain:
            pre = f"{n}." if n else ""
            stages.append(_Stage(n, m, {full[len(pre):]: full for full in generated if full.startswith(pre)}))
        covered = set().union(*(s.generated.values() for s in stages))
        first = next((i for i, s in enumerate(stages) if s.generated), None)
        if covered == generated and first is not None:
            suffix = stages[first:]
            return _Plan(stages[:first], suffix, False, all(_per_sample(s.module) for s in suffix), pair_bytes)
    whole = _Stage("", model, {n: n for n in generated})
    return _Plan([], [whole], True, _per_sample(model), pair_bytes)


# --- running the suffix for a chunk of models ------------------------------------------------

def _fold(module: nn.Module, h: torch.Tensor) -> torch.Tensor:
    m, b = h.shape[:2]
    out = module(h.reshape(m * b, *h.shape[2:]))
    return out.reshape(m, b, *out.shape[1:])


def _vmapped(module: nn.Module, params: dict[str, torch.Tensor], h: torch.Tensor, batched: bool):
    def one(p, x):
        return functional_call(module, p, (x,))
    with warnings.catch_warnings():  # e.g. "no batching rule for _transformer_encoder_layer_fwd"
        warnings.filterwarnings("ignore", message=".*batching rule.*")
        return vmap(one, in_dims=(0, 0 if batched else None))(params, h)


def _affine_of(stage: _Stage, params: dict[str, torch.Tensor], m: int, like: torch.Tensor):
    mod = stage.module
    out = []
    for local, default in (("weight", mod.weight), ("bias", mod.bias)):
        if local in stage.generated:
            out.append(params[stage.generated[local]].reshape(m, -1).to(like.dtype))
        elif default is not None:
            out.append(default.detach().reshape(1, -1).to(like.dtype).expand(m, -1).contiguous())
        else:
            out.append(torch.zeros(m, out[0].shape[1], dtype=like.dtype, device=like.device))
    return out  # (m, C), (m, C)


def _fusable_norm(stage: _Stage) -> str | None:
    mod = stage.module
    if not set(stage.generated) <= {"weight", "bias"}:
        return None
    if isinstance(mod, nn.modules.batchnorm._BatchNorm) and mod.affine and mod.running_mean is not None:
        return "batch"
    if isinstance(mod, nn.LayerNorm) and mod.elementwise_affine:
        return "layer"
    return None


def _activation_of(stage: _Stage | None) -> tuple[str, float] | None:
    if stage is None or stage.generated:
        return None
    if type(stage.module) is nn.ReLU:
        return "relu", 0.0
    if type(stage.module) is nn.LeakyReLU:
        return "leaky_relu", float(stage.module.negative_slope)
    if type(stage.module) is nn.Identity:
        return "identity", 0.0
    return None


def _run_norm(kind, stage, nxt, h, batched, params, m):
    """BatchNorm / LayerNorm with a generated affine (+ the ReLU after it): (m, B, ...)."""
    act = _activation_of(nxt)
    name, slope = act if act else ("identity", 0.0)
    mod = stage.module
    w, b = _affine_of(stage, params, m, h)
    lead = h.shape[:2] if batched else h.shape[:1]  # (m, B) or (B,)
    if kind == "batch":
        c = h.shape[len(lead)]
        x = h.reshape(*lead, c, -1)  # (m?, B, C, L)
        y = norm_affine_act(x, w, b, mod.running_mean.to(h.dtype), mod.running_var.to(h.dtype),
                            float(mod.eps), name, slope)
        out_shape = h.shape[len(lead):]
    else:
        x_hat = F.layer_norm(h, mod.normalized_shape, None, None, mod.eps)
        features = math.prod(mod.normalized_shape)
        x = x_hat.reshape(*lead[:-1], -1, features, 1)  # (m?, R, F, 1), R = B * other dims
        y = norm_affine_act(x, w, b, None, None, 0.0, name, slope)
        out_shape = h.shape[len(lead):]
    batch = h.shape[len(lead) - 1]
    return y.reshape(m, batch, *out_shape), (1 if act else 0)


def _run_suffix(plan: _Plan, h: torch.Tensor, params: dict[str, torch.Tensor], m: int) -> torch.Tensor:
    """Shared activations h (B, ...) -> outputs of m models (m, B, ...). The first stage holds
    generated parameters (the plan starts the suffix there), so h is batched after it."""
    batched = False
    i = 0
    while i < len(plan.suffix):
        st = plan.suffix[i]
        nxt = plan.suffix[i + 1] if i + 1 < len(plan.suffix) else None
        kind = _fusable_norm(st) if st.generated and not plan.whole_model else None
        if kind is not None:
            h, skip = _run_norm(kind, st, nxt, h, batched, params, m)
            batched = True
            i += 1 + skip
            continue
        if st.generated:
            local = {loc: params[full] for loc, full in st.generated.items()}
            h = _vmapped(st.module, local, h, batched)
            batched = True
        elif _per_sample(st.module):
            h = _fold(st.module, h)
        else:
            h = _vmapped(st.module, {}, h, True)
        i += 1
    return h
