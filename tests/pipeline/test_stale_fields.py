"""Every config field either shapes an artifact and is in that step's row of the stale-artifact
table, or is exempt here with the reason. A field in neither (the table's row lost `latent_noise`,
say) would let `sample` reuse an autoencoder trained with another value without a word."""
import dataclasses

import pytest

from pdiff_fast.config import Config
from pdiff_fast.pipeline import run_dir
from pdiff_fast.tasks import config as task_config
from pdiff_fast.tasks.config import TaskConfig

SHARED = {
    "device": "recorded with every artifact; another device rounds differently, it does not make a run stale",
    "memory_budget_mb": "sizes chunks, which never change a result (tests/diffusion/test_sample.py)",
}
EXEMPT = {
    Config: {
        **SHARED,
        "seed": "every step takes it and records it with its artifact (RunDirectory._record)",
        "checkpoint_every": "when a resumable training checkpoint is written, not what is trained",
        "cuda_graph": "the captured loop gives the same models as the uncaptured one (tests/diffusion/test_sample.py)",
        "noise_sigmas": "shapes only the report, which `evaluate` writes whole each time with the value used",
        "prompt_extrapolate": "decides only whether a prompt is allowed, not what a prompt generates",
    },
    TaskConfig: {
        **SHARED,
        "finetune_models": "fine-tuning runs inside `evaluate`, which writes its report whole each time",
        "finetune_steps": "as finetune_models",
        "finetune_lr": "as finetune_models",
        "checkpoint_every": "when a resumable training checkpoint is written, not what is trained",
        "prompt_extrapolate": "decides only whether a prompt is allowed, not what a prompt generates",
    },
}
TABLES = {Config: run_dir.STEP_FIELDS, TaskConfig: task_config.STEP_FIELDS}


@pytest.mark.parametrize("cls", [Config, TaskConfig], ids=["pdiff", "tasks"])
def test_every_config_field_is_tracked_or_exempt(cls):
    fields = {f.name for f in dataclasses.fields(cls)}
    tracked = set().union(*TABLES[cls].values())
    exempt = set(EXEMPT[cls])
    assert not tracked - fields, f"the table names fields the config lacks: {sorted(tracked - fields)}"
    assert not exempt - fields, f"exempt fields the config lacks: {sorted(exempt - fields)}"
    assert not tracked & exempt, f"both tracked and exempt: {sorted(tracked & exempt)}"
    assert fields == tracked | exempt, f"neither tracked nor exempt: {sorted(fields - tracked - exempt)}"
