"""`pdiff-fast`: the whole p-diff pipeline from the command line.

    pdiff-fast run                          # collect -> train -> sample -> evaluate -> report
    pdiff-fast collect --run-dir runs/a     # or one step at a time, all in one run directory
    pdiff-fast train   --run-dir runs/a     # resumes an interrupted training (--restart: from scratch)
    pdiff-fast train   --run-dir runs/a --only diffusion
    pdiff-fast sample  --run-dir runs/a --num-samples 1000
    pdiff-fast evaluate --run-dir runs/a
    pdiff-fast report  --run-dir runs/a
    pdiff-fast run --config my.json         # a JSON file with any Config fields (or `quick`, shipped)
    torchrun --standalone --nproc_per_node=2 -m pdiff_fast run    # many processes (README: Scaling out)
    pdiff-fast study --run-dir runs/study   # ablation, sampler trade-off, fine-tuning (pdiff_fast/pipeline/study.py)
    pdiff-fast tasks run                    # dataset-conditioned generation: zoo, generator, held-out tasks
    pdiff-fast tasks sample --task 3-8      # models for one task (pdiff_fast/tasks/pdiff.py)

A step's config is the run's config.json (the defaults in a new run directory), then the fields
that --config names, then the flags. User errors (bad config, stale, missing or damaged artifacts, diverging
training, file system problems such as a full disk, running out of memory, a run directory another process is
writing to) print one line each and exit 2; Ctrl-C exits 130. Each pipeline and tasks command holds its run
directory's lock while it runs (pdiff_fast/pipeline/lock.py; --wait queues behind another writer).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .config import SAMPLER_NAMES, Config, ConfigError, read_config_file

STEPS = ("collect", "train", "sample", "evaluate", "report", "run")
HELP = {
    "collect": "train the base model and save K checkpoints of the parameter subset",
    "train": "train the parameter autoencoder and the latent diffusion model (resumes an interrupted run)",
    "sample": "generate parameter sets with the trained models",
    "evaluate": "measure the generated and original models and the IoU analysis",
    "report": "print the table and write the two PNG plots",
    "run": "all of the above with one config",
}
FLAG_FIELDS = ["device", "seed", "dataset", "model", "subset", "recipe", "epochs", "k", "trajectories",
               "autoencoder", "ae_steps",
               "diffusion_steps", "num_samples", "sampler", "sample_steps", "eta", "prompt_accuracy", "guidance",
               "prompt_extrapolate"]


def _step_flags(s, run_dir: str, config_help: str) -> None:
    """The flags every pipeline step takes."""
    s.add_argument("--run-dir", default=run_dir, help="directory holding every artifact of the run")
    s.add_argument("--config", help=config_help)
    s.add_argument("--device", help="cpu, cuda, or auto")
    s.add_argument("--seed", type=int)
    s.add_argument("--quiet", action="store_true", help="no progress bars")
    s.add_argument("--allow-stale", action="store_true",
                   help="use artifacts even when they were made from other inputs or settings")
    s.add_argument("--wait", action="store_true",
                   help="when another process is writing to the run directory, wait for it instead of stopping")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pdiff-fast", description="Neural-network parameter diffusion (p-diff), fast.")
    sub = p.add_subparsers(dest="command", required=True)
    for name in STEPS:
        s = sub.add_parser(name, help=HELP[name], description=HELP[name])
        _step_flags(s, "runs/default", "JSON file with Config fields (see pdiff_fast/config.py), or the name of a "
                                       "shipped config: quick, prompted, whole-mlp, whole-cnn1d")
        if name in ("collect", "run"):
            s.add_argument("--dataset", choices=["mnist1d", "digits"])
            s.add_argument("--model", choices=["cnn1d", "resnet", "vit", "mlp"])
            s.add_argument("--subset", help="'last-K-norm-layers', 'all', or a glob pattern of parameter names")
            s.add_argument("--recipe", choices=["v1", "v2", "span"])
            s.add_argument("--epochs", type=int, help="base training epochs")
            s.add_argument("-k", "--k", type=int, help="number of checkpoints")
            s.add_argument("--trajectories", type=int, help="subset-training runs sharing the k checkpoints")
        if name in ("train", "run"):
            s.add_argument("--autoencoder", choices=["auto", "small", "medium", "lowrank"])
            s.add_argument("--ae-steps", type=int)
            s.add_argument("--diffusion-steps", type=int)
            s.add_argument("--restart", action="store_true", help="ignore training checkpoints; train from scratch")
        if name == "train":
            s.add_argument("--only", choices=["autoencoder", "diffusion"],
                           help="train one model; `diffusion` keeps the autoencoder on disk")
        if name in ("sample", "run"):
            s.add_argument("--num-samples", type=int)
            s.add_argument("--sampler", choices=SAMPLER_NAMES)
            s.add_argument("--sample-steps", type=int, help="denoiser evaluations of the few-step samplers (DDPM: 1000)")
            s.add_argument("--eta", type=float, help="DDIM's noise: 0 deterministic, 1 ancestral")
            s.add_argument("--prompt-accuracy", type=float, nargs="+", metavar="ACC",
                           help="prompted runs: the validation accuracies (%%) to ask for, the models split over them")
            s.add_argument("--guidance", type=float, help="prompted runs: classifier-free guidance scale (0: unprompted)")
            s.add_argument("--extrapolate", dest="prompt_extrapolate", action="store_const", const=True,
                           help="prompted runs: allow prompts outside the population's validation accuracies")
    s = sub.add_parser("study", help="the paper's ablation, the sampler trade-off and fine-tuning from generated "
                                     "parameters (pdiff_fast/pipeline/study.py)",
                       description="Run the ablation variants, the sampler trade-off and the fine-tuning comparison; "
                                   "tables in <run-dir>/study.md, numbers in study.json.")
    s.add_argument("--run-dir", default="runs/study", help="directory of the study (each variant in variants/)")
    s.add_argument("--config", help="the base config: a JSON file or a shipped name (default: the defaults)")
    s.add_argument("--only", action="append", choices=["ablation", "sampler", "finetune", "prompted"],
                   help="run this part only (repeatable; default: all four, or 'prompted' for a prompted config)")
    s.add_argument("--variant", action="append", help="ablation variant to run (repeatable; default: all of "
                                                       "pdiff_fast.pipeline.study.VARIANTS)")
    s.add_argument("--jobs", type=int, help="ablation variants run at a time, each in its own process "
                                            "(default: the CPU count on a CPU, 1 on a GPU)")
    s.add_argument("--fresh", action="store_true", help="rerun variants whose current report is on disk")
    s.add_argument("--finetune-models", type=int, default=20, help="models fine-tuned per start")
    for flag in ("--ae-steps", "--diffusion-steps", "--num-samples", "--seed"):
        s.add_argument(flag, type=int)
    s.add_argument("--device", help="cpu, cuda, or auto")
    s.add_argument("--quiet", action="store_true", help="no log lines")
    _tasks_parser(sub)
    return p


TASK_STEPS = {
    "zoo": "train the model zoo: zoo_runs models per seen task, all at once",
    "train": "train the conditioned generator (parameter autoencoder, set encoder, latent diffusion) on the zoo",
    "sample": "generate models for every task (or for --task NAME ...) with the trained generator",
    "evaluate": "no-training accuracy against the baselines and fine-tuning on the held-out tasks; report and plots",
    "report": "print the table and redraw the plots",
    "run": "all of the above with one config",
}
TASK_FLAGS = ["device", "seed", "zoo_runs", "zoo_steps", "ae_steps", "diffusion_steps", "samples_per_task",
              "guidance", "sampler", "sample_steps", "eta", "prompt_accuracy", "prompt_extrapolate"]


def _tasks_parser(sub) -> None:
    t = sub.add_parser("tasks", help="dataset-conditioned generation: weights for tasks the generator has never "
                                     "seen (pdiff_fast/tasks/pdiff.py)",
                       description="Dataset-conditioned generation (D2NWG) on the 90 digit-pair tasks: a model zoo, "
                                   "a task-conditioned generator, models for held-out tasks, and their evaluation.")
    steps = t.add_subparsers(dest="task_command", required=True)
    for name, what in TASK_STEPS.items():
        s = steps.add_parser(name, help=what, description=what)
        _step_flags(s, "runs/tasks", "JSON file with TaskConfig fields (pdiff_fast/tasks/config.py), or the name "
                                     "of a shipped config: tasks-quick, tasks-prompted")
        if name in ("zoo", "run"):
            s.add_argument("--zoo-runs", type=int, help="models per seen task")
            s.add_argument("--zoo-steps", type=int, help="SGD steps per zoo model")
        if name in ("train", "run"):
            s.add_argument("--ae-steps", type=int)
            s.add_argument("--diffusion-steps", type=int)
            s.add_argument("--restart", action="store_true", help="ignore a training checkpoint; train from scratch")
        if name in ("sample", "run"):
            s.add_argument("--samples-per-task", type=int)
            s.add_argument("--guidance", type=float, help="classifier-free guidance scale (0: unconditional)")
            s.add_argument("--sampler", choices=SAMPLER_NAMES)
            s.add_argument("--sample-steps", type=int, help="denoiser evaluations of the few-step samplers (DDPM: 1000)")
            s.add_argument("--eta", type=float, help="DDIM's noise: 0 deterministic, 1 ancestral")
            s.add_argument("--prompt-accuracy", dest="prompt_accuracy", type=float, nargs="+", metavar="ACC",
                           help="prompted runs: the validation accuracies (%%) to ask for, each task's models split over them")
            s.add_argument("--extrapolate", dest="prompt_extrapolate", action="store_const", const=True,
                           help="prompted runs: allow prompts outside the zoo's validation accuracies")
        if name == "sample":
            s.add_argument("--task", action="append", help="a task to sample for, e.g. 3-8 (digit 3 is label 0, "
                                                           "8 label 1; repeatable); default: every task")


def _read_configs(args, cls, flags: dict):
    """The run's config.json, then --config's fields, then the flags: a `cls` config. Each file's problems
    are named with that file (a field of config.json that --config or a flag replaces is not checked);
    a damaged config.json stops with what to do about it."""
    run_json = Path(args.run_dir) / "config.json"
    given = read_config_file(args.config) if args.config else {}
    fields: dict = {}
    if run_json.exists() or run_json.is_symlink():
        try:
            fields = read_config_file(run_json)
            own = {k: v for k, v in fields.items() if k not in given and flags.get(k) is None}
            problems = [f"{run_json}: unknown field {k!r}" for k in sorted(set(own) - set(cls.__dataclass_fields__))]
            problems += cls.problems({k: v for k, v in own.items() if k in cls.__dataclass_fields__}, str(run_json))
            if problems:
                raise ConfigError(problems)
        except ConfigError as exc:
            raise ConfigError(exc.problems[:-1] + [
                f"{exc.problems[-1]}; config.json records this run's settings: repair it, or remove it to start "
                "from --config and the flags"]) from None
    fields.update(given)
    source = args.config or (str(run_json) if fields else "config")
    # a field a flag sets is checked as the flag's value, not as the one it replaces
    cfg = cls.from_dict({k: v for k, v in fields.items() if flags.get(k) is None}, source)
    return cfg.replace(**flags).validate("command-line flags" if any(v is not None for v in flags.values()) else source)


def _tasks(args) -> None:
    from .prompted import PromptedTaskPDiff
    from .tasks import TaskConfig, TaskPDiff, sample_tasks

    cfg = _read_configs(args, TaskConfig, {n: getattr(args, n, None) for n in TASK_FLAGS})
    say = (lambda msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr))
    p = (PromptedTaskPDiff if cfg.prompted else TaskPDiff)(cfg, args.run_dir, progress=not args.quiet, allow_stale=args.allow_stale, log=say)
    step = args.task_command
    if step == "sample" and args.task:
        for name, acc in sample_tasks(p, args.task).items():
            print(f"{name}: {len(acc)} models, test accuracy " + " ".join(f"{a:.1f}" for a in acc)
                  + f" -> {p.run_dir / 'samples' / (name + '.safetensors')}")
        return
    if step == "zoo":
        p.zoo()
    if step == "run":
        p.zoo_unless_current()
    if step in ("train", "run"):
        p.train(restart=args.restart)
    if step in ("sample", "run"):
        p.sample()
    if step in ("evaluate", "run"):
        p.evaluate()
    if step in ("evaluate", "report", "run"):
        print(p.report())
        plots = "calibration.png" if p.PROMPTED else "zero_shot.png, finetune.png"
        print(f"artifacts in {p.run_dir}/ (report.json, report.md, {plots})")


def _config(args) -> Config:
    return _read_configs(args, Config, {n: getattr(args, n, None) for n in FLAG_FIELDS})


def _steps(p, args) -> None:
    from . import distributed

    say = print if distributed.is_main() else (lambda *a: None)  # under torchrun, rank 0 speaks
    if args.command in ("collect", "run"):
        pop = p.collect()
        say(f"collected {pop.params.shape[0]} checkpoints of {pop.spec.dim} parameters; "
            f"test accuracy {pop.accuracy.min():.2f}..{pop.accuracy.max():.2f}")
    if args.command in ("train", "run"):
        p.fit(only=getattr(args, "only", None), restart=args.restart)
        say(f"trained the {getattr(args, 'only', None) or 'autoencoder and the diffusion'} model -> {p.run_dir}")
    if args.command in ("sample", "run"):
        flat = p.sample()
        say(f"generated {flat.shape[0]} parameter sets -> {p.path('generated')}")
    if args.command in ("evaluate", "run"):
        p.evaluate()
    if args.command in ("report", "evaluate", "run"):
        say(p.report())
        plots = ("calibration.png, " if p.PROMPTED else "") + "accuracy_distribution.png, iou_vs_accuracy.png, "
        say(f"\nartifacts in {p.run_dir}/ (report.json, report.md, {plots}distance_vs_accuracy.png)")


def _where() -> str:
    """' (rank N)' on the ranks other than 0 of a torchrun job, else ''."""
    dist = sys.modules.get("pdiff_fast.distributed")
    return f" (rank {dist.rank()})" if dist is not None and dist.rank() != 0 else ""


def _study(args) -> None:
    from .pipeline.study import PARTS, run_study

    fields = read_config_file(args.config) if args.config else {}
    cfg = Config.from_dict(fields, args.config or "config")
    flags = {n: getattr(args, n) for n in ("ae_steps", "diffusion_steps", "num_samples", "seed", "device")}
    cfg = cfg.replace(**flags).validate("command-line flags")
    if args.jobs is not None and args.jobs < 1:
        raise ValueError(f"--jobs must be at least 1, got {args.jobs}")
    if args.finetune_models < 1:
        raise ValueError(f"--finetune-models must be at least 1, got {args.finetune_models}")
    log = (lambda msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr))
    run_study(cfg, args.run_dir, parts=tuple(args.only or (("prompted",) if cfg.prompted else PARTS)), jobs=args.jobs, fresh=args.fresh,
              finetune_models=args.finetune_models, variants=args.variant, log=log)
    print((Path(args.run_dir) / "study.md").read_text())


def _pipeline(args) -> None:
    from . import distributed
    from .pipeline.pdiff import PDiff
    from .prompted import PromptedPDiff

    cfg = _config(args)
    p = (PromptedPDiff if cfg.prompted else PDiff)(cfg, args.run_dir, progress=not args.quiet, allow_stale=args.allow_stale,
              log=lambda msg: print(msg, file=sys.stderr))
    _steps(p, args)
    distributed.shutdown()  # under torchrun: every rank done, the group left cleanly


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "study":
            _study(args)
            return 0
        from .pipeline.lock import run_dir_lock

        step = args.command if args.command != "tasks" else f"tasks {args.task_command}"
        with run_dir_lock(args.run_dir, step, wait=args.wait, log=lambda msg: print(msg, file=sys.stderr)):
            (_tasks if args.command == "tasks" else _pipeline)(args)
    except KeyboardInterrupt:
        print(f"pdiff-fast {args.command}{_where()}: interrupted; finished artifacts and checkpoints are kept",
              file=sys.stderr)
        return 130
    except ConfigError as exc:
        for line in exc.problems:
            print(f"pdiff-fast {args.command}{_where()}: error: {line}", file=sys.stderr)
        return 2
    except (ValueError, OSError, FloatingPointError) as exc:
        msg = " ".join(str(exc).split("\n")) if not isinstance(exc, OSError) or not exc.filename else \
            f"{exc.filename}: {exc.strerror or exc}"
        print(f"pdiff-fast {args.command}{_where()}: error: {msg}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as exc:
        if not isinstance(exc, MemoryError) and "out of memory" not in str(exc):
            raise  # a bug, not something the user met: its traceback is what a report needs
        first = (str(exc).strip().splitlines() or ["no details"])[0]
        print(f"pdiff-fast {args.command}{_where()}: error: out of memory ({type(exc).__name__}: {first}); "
              "lower num_samples, memory_budget_mb or the sizes in the config", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
