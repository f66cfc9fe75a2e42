"""Triton kernels of pdiff_fast, one op per file, installed as `pdiff_fast.kernels`.

Each op file holds the @triton.jit kernels, their launchers and (where the op trains) its
torch.autograd.Function; act_norm_conv1d keeps its reductions in act_norm_conv1d_stats.py.
Shared pieces: launch.py (host-side launch helpers: buffers, tile and grid sizes, dot precision)
and noise.py (the in-kernel noise of q_sample, ddpm_step and ddim_step). Import a kernel module
only through `pdiff_fast.backend`, which checks that Triton can run (CUDA tensors, or
TRITON_INTERPRET=1 on CPU).
"""
