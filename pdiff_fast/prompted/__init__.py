"""Accuracy-prompted generation (after G.pt): checkpoints that span accuracy, labelled on a
validation split (recipe "span"), a latent denoiser conditioned on that accuracy with
classifier-free guidance, and a report of accuracy asked for against accuracy given; the same for
the dataset-conditioned task family (PromptedTaskPDiff: a task and an accuracy together)."""
from .pipeline import PromptedPDiff
from .tasks import PromptedTaskPDiff

__all__ = ["PromptedPDiff", "PromptedTaskPDiff"]
