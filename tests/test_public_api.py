"""The public imports that users, scripts and saved objects rely on keep working after the package
was split into subpackages: every name `pdiff_fast` exports, the subpackages' exports, the old flat
module paths (compatibility aliases, pdiff_fast/_aliases.py) and the commands. That reference
state_dicts still load strictly is tested by tests/nn/test_autoencoder.py and tests/nn/test_denoiser.py."""
import importlib
import subprocess
import sys

import pytest

import pdiff_fast

PUBLIC = ["ODEncoder2Decoder", "small", "medium", "AE_CNN_bottleneck", "ODUnet", "EMA", "DDPMScheduler",
          "DDIMScheduler", "ParamSpec", "Standardizer", "Population", "collect_v1", "collect_v2", "Config", "PDiff",
          "TensorData", "mnist1d", "digits", "from_torch", "build_model", "generate", "use_backend", "TaskConfig",
          "TaskPDiff", "DPMSolverScheduler", "EulerAncestralScheduler", "make_scheduler",
          "PromptedPDiff", "PromptedTaskPDiff"]

# old path -> (names it held, the module or subpackage that holds them now)
OLD = {
    "pdiff_fast.autoencoder": (["ODEncoder2Decoder", "small", "medium", "PRESETS", "min_in_dim"], "pdiff_fast.nn.autoencoder"),
    "pdiff_fast.autoencoder_choice": (["build_autoencoder", "choose_preset"], "pdiff_fast.nn.autoencoder_choice"),
    "pdiff_fast.lowrank_autoencoder": (["LowRankAutoencoder", "lowrank"], "pdiff_fast.nn.lowrank_autoencoder"),
    "pdiff_fast.denoiser": (["EMA", "AE_CNN_bottleneck", "ODUnet", "DENOISERS"], "pdiff_fast.nn.denoiser"),
    "pdiff_fast.set_encoder": (["SetEncoder"], "pdiff_fast.nn.set_encoder"),
    "pdiff_fast.models": (["build_model", "MLP", "CNN1d", "ResNetSmall", "ViTSmall"], "pdiff_fast.nn.models"),
    "pdiff_fast.diffusion": (["DDPMScheduler", "DDIMScheduler", "SchedulerOutput"], "pdiff_fast.diffusion.schedulers"),
    "pdiff_fast.sample": (["generate", "sample_latents", "model_seed", "plan_chunks"], "pdiff_fast.diffusion.sample"),
    "pdiff_fast.population": (["evaluate_population", "evaluate_one_by_one", "PopulationResult", "warm_allocator"],
                              "pdiff_fast.evaluation.population"),
    "pdiff_fast.population_plan": (["_plan"], "pdiff_fast.evaluation.population_plan"),
    "pdiff_fast.novelty": (["verdict", "nearest_distance"], "pdiff_fast.evaluation.novelty"),
    "pdiff_fast.evaluate": (["evaluate", "format_table", "summary", "evaluate_rows"], "pdiff_fast.evaluation.judge"),
    "pdiff_fast.finetune": (["finetune", "random_starts", "format_finetune_table"], "pdiff_fast.evaluation.finetuning"),
    "pdiff_fast.collect": (["Population", "collect_v1", "collect_v2", "rebuild_base", "RECIPES"],
                           "pdiff_fast.pipeline.collect"),
    "pdiff_fast.train": (["fit_autoencoder", "fit_diffusion", "TrainingDiverged"], "pdiff_fast.pipeline.train"),
    "pdiff_fast.run_dir": (["RunDirectory", "StaleArtifact", "prepare_run_dir"], "pdiff_fast.pipeline.run_dir"),
    "pdiff_fast.report": (["plot_report", "titles"], "pdiff_fast.pipeline.report"),
    "pdiff_fast.pipeline": (["PDiff", "pick_device", "RunDirectory", "StaleArtifact", "prepare_run_dir"],
                            "pdiff_fast.pipeline.pdiff"),
    "pdiff_fast.study": (["run_study", "PARTS", "VARIANTS"], "pdiff_fast.pipeline.study"),
    "pdiff_fast.tasks": (["TaskFamily", "Task", "digit_pair_tasks", "split_tasks", "task_by_name", "support"],
                         "pdiff_fast.tasks.family"),
    "pdiff_fast.zoo": (["Zoo", "train_models", "train_one"], "pdiff_fast.tasks.zoo"),
    "pdiff_fast.conditional": (["ConditionedDenoiser", "fit_conditional", "generate_conditioned"],
                               "pdiff_fast.tasks.conditional"),
    "pdiff_fast.task_pipeline": (["TaskConfig", "TaskPDiff", "sample_tasks"], "pdiff_fast.tasks.pdiff"),
    "pdiff_fast.task_report": (["format_report", "plot_report"], "pdiff_fast.tasks.report"),
}
BASE = {"pdiff_fast.config": ["Config", "ConfigError"], "pdiff_fast.io": ["save_tensors", "load_tensors"],
        "pdiff_fast.data": ["TensorData", "mnist1d", "digits", "from_torch"],
        "pdiff_fast.params": ["ParamSpec", "Standardizer"], "pdiff_fast.distributed": ["init", "is_main"],
        "pdiff_fast.backend": ["use_backend"], "pdiff_fast.cli": ["main"]}


def test_everything_exported_imports_from_the_top():
    assert sorted(pdiff_fast.__all__) == sorted(PUBLIC)
    ns: dict = {}
    exec(f"from pdiff_fast import {', '.join(PUBLIC)}", ns)
    assert all(ns[name] is getattr(pdiff_fast, name) for name in PUBLIC)
    assert pdiff_fast.__version__


@pytest.mark.parametrize("old", sorted(OLD))
def test_old_module_paths_still_import(old):
    names, new = OLD[old]
    module = importlib.import_module(old)
    now = importlib.import_module(new)
    for name in names:
        assert getattr(module, name) is getattr(now, name), (old, name)
    ns: dict = {}
    exec(f"from {old} import {', '.join(names)}", ns)  # the statement users wrote
    leaf = old.rsplit(".", 1)[1]
    exec(f"import {old}\nm = {old}\nfrom pdiff_fast import {leaf} as n", ns)
    assert ns["m"] is ns["n"] is module


def test_old_paths_are_the_new_modules():
    """An alias is the module itself, not a copy: patching it patches the code that runs."""
    import pdiff_fast.sample as old
    import pdiff_fast.diffusion.sample as new

    assert old is new and pdiff_fast.task_pipeline is importlib.import_module("pdiff_fast.tasks.pdiff")


@pytest.mark.parametrize("module", sorted(BASE))
def test_the_shared_base_stays_at_the_top(module):
    m = importlib.import_module(module)
    assert all(hasattr(m, name) for name in BASE[module])


@pytest.mark.parametrize("sub", ["nn", "diffusion", "evaluation", "pipeline", "tasks"])
def test_subpackages_say_what_they_hold_and_export_it(sub):
    m = importlib.import_module(f"pdiff_fast.{sub}")
    assert m.__doc__ and len(m.__doc__.split()) > 20
    assert m.__all__ and all(hasattr(m, name) for name in m.__all__)


def test_unknown_attribute_is_an_attribute_error():
    with pytest.raises(AttributeError):
        pdiff_fast.no_such_module  # noqa: B018
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("pdiff_fast.no_such_module")


@pytest.mark.parametrize("cmd", [["-m", "pdiff_fast", "--help"], ["-m", "pdiff_fast", "tasks", "--help"]])
def test_the_command_still_runs(cmd):
    out = subprocess.run([sys.executable, *cmd], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "pdiff-fast" in out.stdout
