"""Shared cases of the elementwise DDPM kernel tests (ddpm_step, ddim_step, q_sample)."""
import torch

device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

SHAPES = {
    "minimal": (1, 12),
    "three_rows": (3, 12),
    "many_short_rows": (1000, 12),
    "odd_7": (2, 7),
    "odd_13": (3, 13),
    "long_non_aligned": (2, 2049),
    "channels": (4, 3, 17),
}


def poisoned(like):
    """Two NaN-filled output buffers shaped like `like`: any element a kernel skips stays NaN."""
    return (torch.full_like(like, float("nan")), torch.full_like(like, float("nan")))
