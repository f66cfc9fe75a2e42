"""Triton kernels of pdiff_fast, one op per file, installed as `pdiff_fast.kernels`.

Each file holds the @triton.jit kernels, their launchers and (where the op trains) its
torch.autograd.Function. Import a kernel module only through `pdiff_fast.backend`, which
checks that Triton can run (CUDA tensors, or TRITON_INTERPRET=1 on CPU).
"""
