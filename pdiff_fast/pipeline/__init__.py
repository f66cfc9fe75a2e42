"""The p-diff pipeline, step by step, every artifact in one run directory. collect: train the base
model, save K checkpoints of its parameter subset (span: checkpoints spanning accuracy, labelled on
a validation split; RECIPES names them all). train: fit the autoencoder, then the latent
diffusion. run_dir: the run directory's provenance checks. report: the plots. PDiff (pdiff, with
its pieces in parts and the train step in fit): the steps together. study: the pipeline run as
the paper's experiments. Imports nn, diffusion, evaluation and the shared base.

`pdiff_fast.pipeline` was PDiff's module before the package had subpackages: PDiff, pick_device
and the run-directory names it re-exported still import from here."""
from .collect import Population, collect_v1, collect_v2, rebuild_base
from .span import RECIPES
from .pdiff import PDiff, pick_device
from .run_dir import MADE_BY, STEP_COUNT, STEP_FIELDS, RunDirectory, StaleArtifact, prepare_run_dir
from .study import PARTS, run_study
from .train import TrainingDiverged, fit_autoencoder, fit_diffusion

__all__ = ["PDiff", "pick_device", "Population", "collect_v1", "collect_v2", "RECIPES", "rebuild_base",
           "fit_autoencoder", "fit_diffusion", "TrainingDiverged", "RunDirectory", "StaleArtifact",
           "prepare_run_dir", "STEP_FIELDS", "MADE_BY", "STEP_COUNT", "run_study", "PARTS"]
