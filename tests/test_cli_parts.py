"""pdiff_fast.cli in-process with the pipelines faked: which steps each command runs with which
arguments, what it prints, how the config is put together (config.json, --config, flags), the run
directory's lock, each kind of error's one line and exit status, and the help text, which must
equal docs/cli.md (regenerate it with `.venv/bin/python tests/test_cli_parts.py`). Written
against the mutants mutmut left alive (tests/mutation, docs/mutation-scores.md); test_pipeline.py,
test_cli_fuzz.py and the tasks tests run the real commands."""
from __future__ import annotations

import json
import os
import sys
import types
from pathlib import Path

import pytest
import torch

from pdiff_fast import Config, cli, distributed
from pdiff_fast.config import ConfigError
from pdiff_fast.pipeline import lock as lock_lib

ROOT = Path(__file__).resolve().parents[1]
CLI_DOC = ROOT / "docs" / "cli.md"


# --- fakes -----------------------------------------------------------------------------------

class FakePipeline:
    """Stands for PDiff / PromptedPDiff: records construction and every step."""
    PROMPTED = False
    made: list = []

    def __init__(self, cfg, run_dir, progress=True, allow_stale=False, log=None):
        self.cfg, self.run_dir, self.progress, self.allow_stale, self.log = cfg, Path(run_dir), progress, allow_stale, log
        self.calls = []
        FakePipeline.made.append(self)

    def collect(self):
        self.calls.append("collect")
        return types.SimpleNamespace(params=torch.zeros(3, 5), spec=types.SimpleNamespace(dim=5),
                                     accuracy=torch.tensor([90.125, 95.5, 91.0]))

    def fit(self, only=None, restart=False):
        self.calls.append(("fit", only, restart))

    def sample(self):
        self.calls.append("sample")
        return torch.zeros(4, 5)

    def path(self, name):
        return self.run_dir / f"{name}.safetensors"

    def evaluate(self):
        self.calls.append("evaluate")

    def report(self):
        self.calls.append("report")
        return "THE TABLE"


class FakePrompted(FakePipeline):
    PROMPTED = True


class FakeTasks(FakePipeline):
    def zoo(self):
        self.calls.append("zoo")

    def zoo_unless_current(self):
        self.calls.append("zoo_unless_current")

    def train(self, restart=False):
        self.calls.append(("train", restart))

    def sample(self):
        self.calls.append("sample")


class FakePromptedTasks(FakeTasks):
    PROMPTED = True


@pytest.fixture
def fake(monkeypatch, tmp_path):
    """The pipelines, the study and the lock faked; cwd in tmp_path. Returns the list of pipelines made."""
    import pdiff_fast.pipeline.pdiff as pdiff_mod
    import pdiff_fast.prompted as prompted_mod
    import pdiff_fast.tasks as tasks_mod

    monkeypatch.chdir(tmp_path)
    FakePipeline.made = []
    monkeypatch.setattr(pdiff_mod, "PDiff", FakePipeline)
    monkeypatch.setattr(prompted_mod, "PromptedPDiff", FakePrompted)
    monkeypatch.setattr(tasks_mod, "TaskPDiff", FakeTasks)
    monkeypatch.setattr(prompted_mod, "PromptedTaskPDiff", FakePromptedTasks)
    return FakePipeline.made


@pytest.fixture
def locks(monkeypatch):
    held = []
    real = lock_lib.run_dir_lock

    def recording(run_dir, step, wait=False, log=None, **kw):
        held.append((str(run_dir), step, wait))
        return real(run_dir, step, wait=wait, log=log, **kw)
    monkeypatch.setattr(lock_lib, "run_dir_lock", recording)
    return held


def run(argv, capsys):
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


# --- the pipeline steps ----------------------------------------------------------------------

def test_run_does_every_step_and_says_what_it_made(fake, locks, capsys):
    code, out, err = run(["run", "--device", "cpu", "--seed", "4", "--restart"], capsys)
    (p,) = fake
    assert code == 0 and p.calls == ["collect", ("fit", None, True), "sample", "evaluate", "report"]
    assert out == ("collected 3 checkpoints of 5 parameters; test accuracy 90.12..95.50\n"
                   "trained the autoencoder and the diffusion model -> runs/default\n"
                   "generated 4 parameter sets -> runs/default/generated.safetensors\n"
                   "THE TABLE\n\n"
                   "artifacts in runs/default/ (report.json, report.md, accuracy_distribution.png, iou_vs_accuracy.png, "
                   "distance_vs_accuracy.png)\n")
    assert p.cfg.seed == 4 and p.cfg.device == "cpu" and p.progress is True and p.allow_stale is False
    assert p.run_dir == Path("runs/default") and locks == [("runs/default", "run", False)]
    p.log("a line")
    assert capsys.readouterr().err == "a line\n"


@pytest.mark.parametrize("command,calls", [
    ("collect", ["collect"]), ("sample", ["sample"]), ("evaluate", ["evaluate", "report"]), ("report", ["report"])])
def test_each_step_alone(fake, locks, capsys, command, calls):
    code, out, err = run([command, "--run-dir", "r", "--quiet", "--allow-stale", "--wait"], capsys)
    (p,) = fake
    assert code == 0 and p.calls == calls and p.progress is False and p.allow_stale is True
    assert locks == [("r", command, True)]


def test_train_only_one_model(fake, capsys):
    code, out, err = run(["train", "--only", "diffusion", "--device", "cpu"], capsys)
    assert code == 0 and fake[0].calls == [("fit", "diffusion", False)]
    assert out == "trained the diffusion model -> runs/default\n"


def test_a_prompted_config_gets_the_prompted_pipeline_and_its_plot(fake, capsys, tmp_path):
    Path("p.json").write_text(json.dumps({"prompted": True, "recipe": "span", "device": "cpu"}))
    code, out, err = run(["report", "--config", "p.json"], capsys)
    assert code == 0 and type(fake[0]) is FakePrompted
    assert out.endswith("(report.json, report.md, calibration.png, accuracy_distribution.png, iou_vs_accuracy.png, "
                        "distance_vs_accuracy.png)\n")


def test_the_other_ranks_say_nothing(fake, capsys, monkeypatch):
    monkeypatch.setattr(distributed, "is_main", lambda: False)
    code, out, err = run(["run", "--device", "cpu"], capsys)
    assert code == 0 and out == "" and len(fake[0].calls) == 5


def test_flags_reach_the_config(fake, capsys):
    argv = ["run", "--device", "cpu", "--seed", "2", "--dataset", "digits", "--model", "mlp", "--subset", "all",
            "--recipe", "v1", "--epochs", "3", "-k", "9", "--trajectories", "3", "--autoencoder", "lowrank",
            "--ae-steps", "5", "--diffusion-steps", "6", "--num-samples", "7", "--sampler", "ddpm",
            "--sample-steps", "8", "--eta", "0.5"]
    assert run(argv, capsys)[0] == 0
    c = fake[0].cfg
    assert (c.device, c.seed, c.dataset, c.model, c.subset, c.recipe, c.epochs, c.k, c.trajectories, c.autoencoder,
            c.ae_steps, c.diffusion_steps, c.num_samples, c.sampler, c.sample_steps, c.eta) == (
        "cpu", 2, "digits", "mlp", "all", "v1", 3, 9, 3, "lowrank", 5, 6, 7, "ddpm", 8, 0.5)
    Path("p.json").write_text(json.dumps({"prompted": True, "recipe": "span", "device": "cpu"}))
    assert run(["sample", "--config", "p.json", "--prompt-accuracy", "90", "95.5", "--guidance", "2",
                "--extrapolate"], capsys)[0] == 0
    c = fake[1].cfg
    assert c.prompt_accuracy == [90.0, 95.5] and c.guidance == 2.0 and c.prompt_extrapolate is True
    assert run(["sample", "--config", "p.json"], capsys)[0] == 0
    assert fake[2].cfg.prompt_extrapolate is False and fake[2].cfg.prompt_accuracy is None


# --- the config: config.json, then --config, then the flags ----------------------------------

def test_config_layers(fake, capsys):
    os.makedirs("r")
    Path("r/config.json").write_text(json.dumps({"device": "cpu", "seed": 1, "k": 7, "epochs": 2}))
    Path("c.json").write_text(json.dumps({"seed": 5, "k": 8}))
    assert run(["run", "--run-dir", "r", "--config", "c.json", "-k", "9"], capsys)[0] == 0
    c = fake[0].cfg
    assert (c.seed, c.k, c.epochs, c.device) == (5, 9, 2, "cpu")  # flag > --config > config.json > defaults
    assert run(["run", "--run-dir", "r"], capsys)[0] == 0
    assert (fake[1].cfg.seed, fake[1].cfg.k) == (1, 7)


def test_config_json_problems_say_what_to_do(fake, capsys):
    os.makedirs("r")
    Path("r/config.json").write_text(json.dumps({"device": "cpu", "k": -1, "colour": 3, "shade": 4}))
    code, out, err = run(["run", "--run-dir", "r"], capsys)
    assert code == 2 and fake == []
    assert err.splitlines() == [
        "pdiff-fast run: error: r/config.json: unknown field 'colour'",
        "pdiff-fast run: error: r/config.json: unknown field 'shade'",
        "pdiff-fast run: error: r/config.json: field 'k': must be at least 1, got -1; config.json records this run's "
        "settings: repair it, or remove it to start from --config and the flags"]


def test_config_json_fields_that_are_replaced_are_not_checked(fake, capsys):
    os.makedirs("r")
    Path("r/config.json").write_text(json.dumps({"device": "cpu", "k": -1, "epochs": -3}))
    Path("c.json").write_text(json.dumps({"epochs": 2}))
    assert run(["run", "--run-dir", "r", "--config", "c.json", "-k", "4"], capsys)[0] == 0
    assert (fake[0].cfg.k, fake[0].cfg.epochs) == (4, 2)
    Path("c.json").write_text(json.dumps({"epochs": 2, "seed": -5}))  # --config's own field, replaced by a flag
    assert run(["run", "--run-dir", "r", "--config", "c.json", "-k", "4", "--seed", "6"], capsys)[0] == 0
    assert fake[1].cfg.seed == 6


def test_a_damaged_config_json_is_named(fake, capsys):
    os.makedirs("r")
    Path("r/config.json").write_text("{not json")
    code, out, err = run(["run", "--run-dir", "r"], capsys)
    assert code == 2 and err.startswith("pdiff-fast run: error: r/config.json") and err.rstrip().endswith(
        "; config.json records this run's settings: repair it, or remove it to start from --config and the flags")
    os.remove("r/config.json")
    os.symlink("missing.json", "r/config.json")  # a dangling link is read (and refused), not skipped
    code, out, err = run(["run", "--run-dir", "r"], capsys)
    assert code == 2 and "r/config.json" in err and fake == []


def test_problems_name_their_source(fake, capsys):
    assert run(["run", "-k", "0"], capsys)[2].startswith("pdiff-fast run: error: command-line flags: field 'k'")
    Path("c.json").write_text(json.dumps({"k": 0}))
    assert run(["run", "--config", "c.json"], capsys)[2].startswith("pdiff-fast run: error: c.json: field 'k'")
    os.makedirs("r")
    Path("r/config.json").write_text(json.dumps({"device": "cpu"}))
    Path("c2.json").write_text(json.dumps({"device": "cpu"}))
    assert run(["run", "--run-dir", "r", "--config", "c2.json"], capsys)[0] == 0


def test_read_configs_sources(tmp_path, monkeypatch):
    seen = []
    real = Config.validate
    monkeypatch.setattr(Config, "validate", lambda self, source="config": seen.append(source) or real(self, source))
    monkeypatch.chdir(tmp_path)
    args = types.SimpleNamespace(run_dir="r", config=None)
    assert cli._read_configs(args, Config, {"k": None}) == Config()
    os.makedirs("r")
    Path("r/config.json").write_text(json.dumps({"k": 3}))
    assert cli._read_configs(args, Config, {"k": None}).k == 3
    assert cli._read_configs(args, Config, {"k": 5}).k == 5
    Path("c.json").write_text(json.dumps({"k": 4}))
    assert cli._read_configs(types.SimpleNamespace(run_dir="r", config="c.json"), Config, {"k": None}).k == 4
    assert seen == ["config", "r/config.json", "command-line flags", "c.json"]


# --- the tasks commands ----------------------------------------------------------------------

@pytest.mark.parametrize("command,calls", [
    ("zoo", ["zoo"]), ("train", [("train", False)]), ("sample", ["sample"]), ("evaluate", ["evaluate", "report"]),
    ("report", ["report"]),
    ("run", ["zoo_unless_current", ("train", False), "sample", "evaluate", "report"])])
def test_tasks_steps(fake, locks, capsys, command, calls):
    code, out, err = run(["tasks", command, "--device", "cpu", "--quiet"], capsys)
    (p,) = fake
    assert code == 0 and p.calls == calls and p.progress is False and p.run_dir == Path("runs/tasks")
    assert locks == [("runs/tasks", f"tasks {command}", False)]
    if "report" in calls:
        assert out == "THE TABLE\nartifacts in runs/tasks/ (report.json, report.md, zero_shot.png, finetune.png)\n"
    else:
        assert out == ""
    p.log("quiet")
    assert capsys.readouterr().err == ""


def test_tasks_flags_restart_and_logging(fake, capsys):
    argv = ["tasks", "run", "--device", "cpu", "--seed", "3", "--zoo-runs", "2", "--zoo-steps", "4", "--ae-steps", "5",
            "--diffusion-steps", "6", "--samples-per-task", "7", "--guidance", "1.5", "--sampler", "ddpm",
            "--sample-steps", "8", "--eta", "0.25", "--restart", "--allow-stale"]
    assert run(argv, capsys)[0] == 0
    p = fake[0]
    c = p.cfg
    assert (c.seed, c.zoo_runs, c.zoo_steps, c.ae_steps, c.diffusion_steps, c.samples_per_task, c.guidance, c.sampler,
            c.sample_steps, c.eta) == (3, 2, 4, 5, 6, 7, 1.5, "ddpm", 8, 0.25)
    assert ("train", True) in p.calls and p.allow_stale is True and p.progress is True
    p.log("a line")
    assert capsys.readouterr().err == "a line\n"


def test_prompted_tasks_get_their_pipeline_and_plot(fake, capsys):
    code, out, err = run(["tasks", "run", "--config", "tasks-prompted", "--device", "cpu", "--prompt-accuracy", "80",
                          "--extrapolate"], capsys)
    assert code == 0 and type(fake[0]) is FakePromptedTasks
    assert fake[0].cfg.prompt_accuracy == [80.0] and fake[0].cfg.prompt_extrapolate is True
    assert out.endswith("(report.json, report.md, calibration.png)\n")


def test_tasks_sample_for_named_tasks(fake, capsys, monkeypatch):
    import pdiff_fast.tasks as tasks_mod

    asked = []
    monkeypatch.setattr(tasks_mod, "sample_tasks", lambda p, names: asked.append((p, names)) or {
        "3-8": [90.04, 81.25], "0-1": [100.0]})
    code, out, err = run(["tasks", "sample", "--device", "cpu", "--task", "3-8", "--task", "0-1"], capsys)
    assert code == 0 and asked == [(fake[0], ["3-8", "0-1"])] and fake[0].calls == []
    assert out == ("3-8: 2 models, test accuracy 90.0 81.2 -> runs/tasks/samples/3-8.safetensors\n"
                   "0-1: 1 models, test accuracy 100.0 -> runs/tasks/samples/0-1.safetensors\n")


# --- the study -------------------------------------------------------------------------------

@pytest.fixture
def study(monkeypatch):
    import pdiff_fast.pipeline.study as study_mod

    calls = []

    def run_study(cfg, run_dir, **kw):
        calls.append((cfg, run_dir, kw))
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        (Path(run_dir) / "study.md").write_text("STUDY TABLE\n")
    monkeypatch.setattr(study_mod, "run_study", run_study)
    return calls


def test_study_defaults_and_flags(fake, study, locks, capsys):
    code, out, err = run(["study", "--device", "cpu"], capsys)
    assert code == 0 and out == "STUDY TABLE\n\n" and locks == []  # the study locks each variant itself
    cfg, run_dir, kw = study[0]
    assert run_dir == "runs/study" and cfg == Config(device="cpu")
    assert kw.pop("log") is not None and kw == {"parts": ("ablation", "sampler", "finetune", "prompted"), "jobs": None,
                                                "fresh": False, "finetune_models": 20, "variants": None}
    argv = ["study", "--run-dir", "s", "--device", "cpu", "--only", "sampler", "--only", "finetune", "--variant", "v1",
            "--jobs", "2", "--fresh", "--finetune-models", "3", "--ae-steps", "4", "--diffusion-steps", "5",
            "--num-samples", "6", "--seed", "7", "--quiet"]
    assert run(argv, capsys)[0] == 0
    cfg, run_dir, kw = study[1]
    assert run_dir == "s" and (cfg.ae_steps, cfg.diffusion_steps, cfg.num_samples, cfg.seed) == (4, 5, 6, 7)
    log = kw.pop("log")
    assert kw == {"parts": ("sampler", "finetune"), "jobs": 2, "fresh": True, "finetune_models": 3, "variants": ["v1"]}
    log("hidden")
    assert capsys.readouterr().err == ""
    run(["study", "--device", "cpu"], capsys)
    study[2][2]["log"]("shown")
    assert capsys.readouterr().err == "shown\n"


def test_study_of_a_prompted_config_runs_its_part(fake, study, capsys):
    assert run(["study", "--config", "prompted", "--device", "cpu"], capsys)[0] == 0
    assert study[0][2]["parts"] == ("prompted",) and study[0][0].prompted is True


@pytest.mark.parametrize("argv,message", [
    (["--jobs", "0"], "--jobs must be at least 1, got 0"),
    (["--finetune-models", "0"], "--finetune-models must be at least 1, got 0"),
    (["--seed", "-1"], "command-line flags: field 'seed': must be at least 0, got -1")])
def test_study_refuses_bad_flags(fake, study, capsys, argv, message):
    code, out, err = run(["study", "--device", "cpu", *argv], capsys)
    assert code == 2 and err.startswith(f"pdiff-fast study: error: {message}") and study == []
    assert run(["study", "--device", "cpu", "--jobs", "1", "--finetune-models", "1"], capsys)[0] == 0


def test_study_config_file_problems_name_the_file(fake, study, capsys):
    Path("c.json").write_text(json.dumps({"k": 0}))
    code, out, err = run(["study", "--config", "c.json"], capsys)
    assert code == 2 and err.startswith("pdiff-fast study: error: c.json: field 'k'")


# --- errors ----------------------------------------------------------------------------------

def failing(monkeypatch, exc):
    def collect(self):
        raise exc
    monkeypatch.setattr(FakePipeline, "collect", collect)


@pytest.mark.parametrize("exc,line", [
    (ValueError("bad\nthing  here"), "pdiff-fast collect: error: bad thing  here"),
    (FloatingPointError("loss became nan"), "pdiff-fast collect: error: loss became nan"),
    (OSError(28, "No space left on device", "runs/x/a.safetensors"),
     "pdiff-fast collect: error: runs/x/a.safetensors: No space left on device"),
    (OSError(28, "No space left on device"), "pdiff-fast collect: error: [Errno 28] No space left on device"),
    (ConfigError(["one", "two"]), "pdiff-fast collect: error: one\npdiff-fast collect: error: two"),
    (MemoryError(), "pdiff-fast collect: error: out of memory (MemoryError: no details); lower num_samples, "
                    "memory_budget_mb or the sizes in the config"),
    (RuntimeError("CUDA out of memory. Tried to allocate 2 GiB\nmore"),
     "pdiff-fast collect: error: out of memory (RuntimeError: CUDA out of memory. Tried to allocate 2 GiB); lower "
     "num_samples, memory_budget_mb or the sizes in the config")])
def test_user_errors_are_one_line_each_and_exit_2(fake, capsys, monkeypatch, exc, line):
    failing(monkeypatch, exc)
    code, out, err = run(["collect", "--device", "cpu"], capsys)
    assert code == 2 and err == line + "\n"


def test_an_os_error_with_a_filename_but_no_strerror(fake, capsys, monkeypatch):
    exc = OSError()
    exc.filename = "some/file"
    failing(monkeypatch, exc)
    assert run(["collect", "--device", "cpu"], capsys)[2] == "pdiff-fast collect: error: some/file: [Errno None] None: 'some/file'\n"


def test_interrupt_exits_130_and_a_bug_keeps_its_traceback(fake, capsys, monkeypatch):
    failing(monkeypatch, KeyboardInterrupt())
    code, out, err = run(["collect", "--device", "cpu"], capsys)
    assert code == 130 and err == "pdiff-fast collect: interrupted; finished artifacts and checkpoints are kept\n"
    failing(monkeypatch, RuntimeError("index out of range"))
    with pytest.raises(RuntimeError, match="index out of range"):
        cli.main(["collect", "--device", "cpu"])


def test_other_ranks_say_which_they_are(fake, capsys, monkeypatch):
    monkeypatch.setattr(distributed, "rank", lambda: 3)
    failing(monkeypatch, ValueError("bad"))
    assert run(["collect", "--device", "cpu"], capsys)[2] == "pdiff-fast collect (rank 3): error: bad\n"
    monkeypatch.setattr(distributed, "rank", lambda: 0)
    assert cli._where() == ""
    monkeypatch.delitem(sys.modules, "pdiff_fast.distributed")
    assert cli._where() == ""


def test_a_busy_run_directory_is_a_user_error(fake, capsys, tmp_path):
    with lock_lib.run_dir_lock("r", "train"):
        code, out, err = run(["sample", "--run-dir", "r", "--device", "cpu"], capsys)
    assert code == 2 and err.startswith("pdiff-fast sample: error: r: in use by pid ") and fake == []


def test_the_locks_messages_go_to_stderr(fake, capsys, monkeypatch):
    import fcntl

    os.makedirs("r")
    other = os.open(f"r/{lock_lib.LOCK_NAME}", os.O_RDWR | os.O_CREAT)
    fcntl.flock(other, fcntl.LOCK_EX)  # another writer, for flock (a second open file)

    def sleep(seconds):
        os.close(other)
    monkeypatch.setattr(lock_lib.time, "sleep", sleep)
    code, out, err = run(["report", "--run-dir", "r", "--wait", "--device", "cpu"], capsys)
    assert code == 0 and err == "r: waiting for another process to finish\n" and fake[0].calls == ["report"]


def test_the_pipeline_leaves_the_process_group(fake, capsys, monkeypatch):
    left = []
    monkeypatch.setattr(distributed, "shutdown", lambda: left.append(1))
    assert run(["report", "--device", "cpu"], capsys)[0] == 0 and left == [1]


# --- the parser and its help -----------------------------------------------------------------

def test_parser_defaults():
    p = cli._parser()
    a = p.parse_args(["collect"])
    assert (a.run_dir, a.config, a.device, a.seed, a.quiet, a.allow_stale, a.wait) == (
        "runs/default", None, None, None, False, False, False)
    assert p.parse_args(["tasks", "zoo"]).run_dir == "runs/tasks"
    s = p.parse_args(["study"])
    assert (s.run_dir, s.finetune_models, s.only, s.variant, s.jobs, s.fresh) == ("runs/study", 20, None, None, None, False)
    t = p.parse_args(["train"])
    assert (t.restart, t.only) == (False, None)
    with pytest.raises(SystemExit):
        p.parse_args([])
    with pytest.raises(SystemExit):
        p.parse_args(["tasks"])
    assert cli.STEPS == ("collect", "train", "sample", "evaluate", "report", "run")
    assert set(cli.FLAG_FIELDS) <= set(Config.__dataclass_fields__)


def help_pages() -> str:
    """Every command's --help, as docs/cli.md shows them (argparse wraps at $COLUMNS: 100 here)."""
    p = cli._parser()
    pages = [("pdiff-fast", p)]
    for action in p._subparsers._group_actions:
        for name, sub in action.choices.items():
            pages.append((f"pdiff-fast {name}", sub))
            if sub._subparsers is not None:
                for a in sub._subparsers._group_actions:
                    pages += [(f"pdiff-fast {name} {n}", s) for n, s in a.choices.items()]
    text = ["# Command line", "",
            "`pdiff-fast` runs the pipeline from the shell; every command's `--help` follows. How the steps fit",
            "together: [The pipeline](pipeline.md); the tasks commands: [Dataset-conditioned generation](tasks.md).",
            "This page is made from the parser (`.venv/bin/python tests/test_cli_parts.py`), and a test keeps it",
            "current.", ""]
    for title, parser in pages:
        text += [f"## `{title}`", "", "```text", parser.format_help().rstrip(), "```", ""]
    return "\n".join(text)


def test_docs_cli_page_is_the_help(monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    assert CLI_DOC.read_text() == help_pages(), "docs/cli.md is out of date: run .venv/bin/python tests/test_cli_parts.py"


if __name__ == "__main__":
    os.environ["COLUMNS"] = "100"
    CLI_DOC.write_text(help_pages())
    print(f"wrote {CLI_DOC}")
