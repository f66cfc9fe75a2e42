"""pdiff_fast: neural-network parameter diffusion (p-diff) on fused Triton kernels and a
C++/CUDA extension, with the plain-PyTorch reference beside every fast path.

Drop-in modules (same constructor arguments and state_dict keys as the reference code):
`ODEncoder2Decoder` / `small` / `medium`, `AE_CNN_bottleneck`, `ODUnet`.

The package, in the order data flows (a layer imports only the layers before it):
- the shared base, here at the top: config, io, data, params, distributed, backend; the fused ops
  (ops/) and their Triton kernels (kernels/);
- nn/: the networks (autoencoders, denoisers, set encoder, base models);
- diffusion/: the noise schedules and sampling (`generate`);
- evaluation/: measuring populations of models (evaluator, novelty, the judgement, fine-tuning);
- pipeline/: the p-diff steps (collect, train, sample, evaluate, report) in a run directory, PDiff;
- tasks/: dataset-conditioned generation, TaskPDiff;
- prompted/: accuracy-prompted generation (on tasks/' conditioned denoiser), PromptedPDiff, PromptedTaskPDiff;
- cli (the `pdiff-fast` command) and this file, the front door.
The old flat module paths (pdiff_fast.autoencoder, pdiff_fast.sample, ...) still import: _aliases.py.
"""
from . import _aliases
from .backend import use_backend
from .config import Config
from .data import TensorData, digits, from_torch, mnist1d
from .diffusion import (DDIMScheduler, DDPMScheduler, DPMSolverScheduler, EulerAncestralScheduler, generate,
                        make_scheduler)
from .nn import EMA, AE_CNN_bottleneck, ODEncoder2Decoder, ODUnet, build_model, medium, small
from .params import ParamSpec, Standardizer
from .pipeline import PDiff, Population, collect_v1, collect_v2
from .prompted import PromptedPDiff, PromptedTaskPDiff
from .tasks import TaskConfig, TaskPDiff

_aliases.register(__name__)

__version__ = "0.1.0"
__all__ = [
    "ODEncoder2Decoder", "small", "medium", "AE_CNN_bottleneck", "ODUnet", "EMA",
    "DDPMScheduler", "DDIMScheduler", "DPMSolverScheduler", "EulerAncestralScheduler", "make_scheduler",
    "ParamSpec", "Standardizer", "Population", "collect_v1", "collect_v2",
    "Config", "PDiff", "TensorData", "mnist1d", "digits", "from_torch", "build_model", "generate", "use_backend",
    "TaskConfig", "TaskPDiff", "PromptedPDiff", "PromptedTaskPDiff",
]


def __getattr__(name: str):
    """pdiff_fast.<old module name>: the module that now holds its code (_aliases.py)."""
    return _aliases.module(__name__, name)
