"""Accuracy-prompted generation (after G.pt): checkpoints that span accuracy, labelled on a
validation split (recipe "span"), a latent denoiser conditioned on that accuracy with
classifier-free guidance, and a report of accuracy asked for against accuracy given."""
from .pipeline import PromptedPDiff

__all__ = ["PromptedPDiff"]
