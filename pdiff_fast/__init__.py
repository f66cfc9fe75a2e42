"""pdiff_fast: neural-network parameter diffusion (p-diff) on fused Triton kernels and a
C++/CUDA extension, with the plain-PyTorch reference beside every fast path.

Drop-in modules (same constructor arguments and state_dict keys as the reference code):
`ODEncoder2Decoder` / `small` / `medium`, `AE_CNN_bottleneck`, `ODUnet`.
"""
from .autoencoder import ODEncoder2Decoder, medium, small
from .backend import use_backend
from .collect import Population, collect_v1, collect_v2
from .config import Config
from .data import TensorData, digits, from_torch, mnist1d
from .denoiser import EMA, AE_CNN_bottleneck, ODUnet
from .diffusion import DDIMScheduler, DDPMScheduler
from .models import build_model
from .params import ParamSpec, Standardizer
from .pipeline import PDiff
from .sample import generate
from .task_pipeline import TaskConfig, TaskPDiff

__version__ = "0.1.0"
__all__ = [
    "ODEncoder2Decoder", "small", "medium", "AE_CNN_bottleneck", "ODUnet", "EMA",
    "DDPMScheduler", "DDIMScheduler", "ParamSpec", "Standardizer", "Population", "collect_v1", "collect_v2",
    "Config", "PDiff", "TensorData", "mnist1d", "digits", "from_torch", "build_model", "generate", "use_backend",
    "TaskConfig", "TaskPDiff",
]
