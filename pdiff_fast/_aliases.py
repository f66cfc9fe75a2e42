"""Compatibility aliases for the old module paths. Until the package was split into subpackages
(nn, diffusion, evaluation, pipeline, tasks) every module sat in pdiff_fast/ itself; code and saved
objects that name an old path keep working: `import pdiff_fast.autoencoder` or
`from pdiff_fast.sample import generate` give the module that now holds that code (the same module
object, so patching one patches the other). Three old paths are now subpackages of the same name
whose __init__ exports what the old module held: pdiff_fast.diffusion (the schedulers),
pdiff_fast.pipeline (PDiff) and pdiff_fast.tasks (the task family). New code imports from
pdiff_fast itself or from the new paths."""
from __future__ import annotations

import importlib
import sys

MOVED = {
    "autoencoder": "nn.autoencoder",
    "autoencoder_choice": "nn.autoencoder_choice",
    "lowrank_autoencoder": "nn.lowrank_autoencoder",
    "denoiser": "nn.denoiser",
    "set_encoder": "nn.set_encoder",
    "models": "nn.models",
    "sample": "diffusion.sample",
    "population_plan": "evaluation.population_plan",
    "population": "evaluation.population",
    "novelty": "evaluation.novelty",
    "evaluate": "evaluation.judge",
    "finetune": "evaluation.finetuning",
    "collect": "pipeline.collect",
    "train": "pipeline.train",
    "run_dir": "pipeline.run_dir",
    "report": "pipeline.report",
    "study": "pipeline.study",
    "zoo": "tasks.zoo",
    "conditional": "tasks.conditional",
    "task_pipeline": "tasks.pdiff",
    "task_report": "tasks.report",
}


def register(package: str) -> None:
    """Make `package.<old>` import as the module now at `package.<new>`."""
    for old, new in MOVED.items():
        sys.modules.setdefault(f"{package}.{old}", importlib.import_module(f"{package}.{new}"))


def module(package: str, name: str):
    """The module an old path `package.<name>` stands for (for the package's __getattr__)."""
    if name not in MOVED:
        raise AttributeError(f"module {package!r} has no attribute {name!r}")
    return importlib.import_module(f"{package}.{MOVED[name]}")
