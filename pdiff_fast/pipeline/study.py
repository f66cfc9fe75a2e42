"""`pdiff-fast study`: the paper's ablation, the sampler trade-off and fine-tuning from generated
parameters, in one command, each table computed from the runs it makes.

    pdiff-fast study --run-dir runs/study              # all three parts, the default config
    pdiff-fast study --only sampler --config quick     # one part, a smaller config

- ablation: one whole pipeline run (collect, train, sample, evaluate) per variant of the base
  config (VARIANTS: without input / latent noise augmentation, K = 1 / 10 / 50, the last norm
  layer only), each in its own run directory under <run-dir>/variants/, run `jobs` at a time
  in separate processes (each with cores / jobs threads). A variant whose run directory already
  holds a current report of the same config is reused (`fresh=True` reruns it).
- sampler: the default variant's trained models sample with DDPM 1000 and each few-step sampler
  at 10..50 steps (study_samplers.FRONTIER); the sampling time, accuracy and novelty of each, and
  the fewest denoiser evaluations that keep DDPM 1000's quality.
- finetune: test accuracy after 0, 1 and 5 epochs of training the subset from generated, from
  original and from random parameters (pdiff_fast.evaluation.finetuning).
- prompted: one accuracy-prompted run (pdiff_fast.prompted) of the base config with recipe "span" and
  prompting on (a base config that is prompted already runs as it is), in <run-dir>/variants/prompted:
  its calibration (accuracy asked for against accuracy given), the highest prompt honoured, and
  that prompt's models against the checkpoints that reach it, with the verdict. A prompted base
  config runs this part only: the other parts are p-diff's.

Everything lands in <run-dir>/study.json and study.md (rewritten after each part, so an
interrupted study keeps what it finished) and three plots whose titles state the numbers.
"""
from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import time
from pathlib import Path

import torch

from ..config import Config
from .study_samplers import FRONTIER as SAMPLERS
from .study_samplers import (LEVEL, fewest_level_steps, format_samplers, generated_fields,  # noqa: F401
                             plot_samplers, read_samplers, run_samplers)

VARIANTS = {  # name -> the fields it changes in the base config
    "default": {},
    "no input noise": {"input_noise": 0.0},
    "no latent noise": {"latent_noise": 0.0},
    "no noise": {"input_noise": 0.0, "latent_noise": 0.0},
    "K=1": {"k": 1, "trajectories": 1},
    "K=10": {"k": 10},
    "K=50": {"k": 50},
    "last norm layer only": {"subset": "last-1-norm-layers"},
}
FINETUNE_EPOCHS = (0, 1, 5)
PROMPTED = {"recipe": "span", "prompted": True}  # the prompted part's changes to an unprompted base config
PARTS = ("ablation", "sampler", "finetune", "prompted")


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")


def variant_config(base: Config, name: str) -> Config:
    return base.replace(**VARIANTS[name]).validate(f"study variant {name!r}")


def _current_report(run_dir: Path, config: Config) -> dict | None:
    """The run directory's report when it is complete, current and made with `config`."""
    from ..io import load_json, read_digest
    from .run_dir import RunDirectory

    try:
        on_disk = load_json(run_dir / RunDirectory.FILES["config"])
        report = load_json(run_dir / RunDirectory.FILES["report"])
    except (OSError, ValueError):
        return None
    if on_disk != config.to_dict() or not isinstance(report, dict) or "verdict" not in report:
        return None
    inputs = report.get("inputs", {})
    if any(read_digest(run_dir / RunDirectory.FILES[name]) != digest for name, digest in inputs.items()):
        return None
    return report


def _run_variant(config: dict, run_dir: str, threads: int | None) -> None:
    """One whole pipeline run (in a worker process: its own threads, no progress bars)."""
    from .pdiff import pipeline_for

    if threads:
        torch.set_num_threads(threads)
    cfg = Config.from_dict(config)
    pipeline_for(cfg)(cfg, run_dir, progress=False, log=None).run()


def _spec_dim(run_dir: Path) -> int:
    from ..io import read_meta
    from ..params import ParamSpec
    from .run_dir import RunDirectory

    return ParamSpec.from_dict(read_meta(run_dir / RunDirectory.FILES["population"])[0]["spec"]).dim


def _row(name: str, config: Config, run_dir: Path, report: dict) -> dict:
    timings = report.get("timings", {})
    steps = ("collect", "train_autoencoder", "train_diffusion", "sample", "evaluate")
    return {
        "variant": name, "changes": VARIANTS.get(name, {}), "run_dir": str(run_dir),
        "k": config.k, "dim": _spec_dim(run_dir), "input_noise": config.input_noise,
        "latent_noise": config.latent_noise, "original": report["original"], **generated_fields(report),
        "tau": report["novelty"]["tau"], "seconds": sum(timings.get(s, 0.0) for s in steps),
    }


def default_jobs(device: str) -> int:
    if device == "cuda" or (device == "auto" and torch.cuda.is_available()):
        return 1
    return max(1, min(len(VARIANTS), os.cpu_count() or 1))


def run_ablation(base: Config, study_dir: Path, *, names=None, jobs: int | None = None, fresh: bool = False,
                 log=print) -> list[dict]:
    names = list(names or VARIANTS)
    jobs = jobs or default_jobs(base.device)
    threads = max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else None
    todo, rows = {}, {}
    for name in names:
        cfg, run_dir = variant_config(base, name), study_dir / "variants" / slug(name)
        if not fresh and _current_report(run_dir, cfg) is not None:
            log(f"study: ablation {name!r}: reusing {run_dir}")
        else:
            todo[name] = (cfg, run_dir)
    if todo:
        log(f"study: ablation: running {len(todo)} variant(s), {jobs} at a time: {', '.join(todo)}")
    if jobs == 1:
        for name, (cfg, run_dir) in todo.items():
            t0 = time.perf_counter()
            _run_variant(cfg.to_dict(), str(run_dir), None)
            log(f"study: ablation {name!r} done in {time.perf_counter() - t0:.0f} s")
    elif todo:
        ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: no inherited threads or locks
        with cf.ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
            futures = {pool.submit(_run_variant, cfg.to_dict(), str(run_dir), threads): name
                       for name, (cfg, run_dir) in todo.items()}
            for future in cf.as_completed(futures):
                future.result()  # a failed variant stops the study with its own error
                log(f"study: ablation {futures[future]!r} done")
    for name in names:
        cfg, run_dir = variant_config(base, name), study_dir / "variants" / slug(name)
        report = _current_report(run_dir, cfg)
        if report is None:
            raise RuntimeError(f"study: variant {name!r} left no current report in {run_dir}")
        rows[name] = _row(name, cfg, run_dir, report)
    return [rows[n] for n in names]


def _default_run(base: Config, study_dir: Path, fresh: bool, log):
    """The default variant's run (trained now if the ablation did not leave it)."""
    from .pdiff import PDiff

    run_dir = study_dir / "variants" / slug("default")
    if fresh or _current_report(run_dir, base) is None:
        run_ablation(base, study_dir, names=["default"], jobs=1, fresh=fresh, log=log)
    return PDiff(base, run_dir, progress=False, log=None)


def run_finetune(p, n_models: int = 20, epochs=FINETUNE_EPOCHS, log=print) -> dict:
    """Fine-tune n_models of each start: the first generated rows (they are i.i.d.), originals
    evenly spaced over the collection, random draws at the originals' per-tensor scale."""
    from .collect import rebuild_base
    from ..evaluation.finetuning import finetune, random_starts

    if n_models < 1:
        raise ValueError(f"study: the fine-tuning needs at least one model per start, got {n_models}")
    c = p.config
    pop, digest = p._population()
    gen = p._load("generated", {"population": digest})[0]["params"]
    k = pop.params.shape[0]
    pick = torch.linspace(0, k - 1, min(n_models, k)).round().long().unique()
    starts = {"generated": gen[:n_models], "original": pop.params[pick],
              "random": random_starts(pop.spec, pop.params, n_models, seed=c.seed)}
    t0 = time.perf_counter()
    result = finetune(rebuild_base(p.new_model(), pop).to(p.device), pop.spec, p.data.to(p.device), {n: s.to(p.device) for n, s in starts.items()},
                      epochs=epochs, lr=c.subset_lr, batch_size=c.batch_size, seed=c.seed,
                      memory_budget_bytes=c.memory_budget_mb << 20)
    result["seconds"] = time.perf_counter() - t0
    log(f"study: fine-tuning {sum(len(s) for s in starts.values())} models for {max(epochs)} epochs: "
        f"{result['seconds']:.0f} s")
    return result


def prompted_config(base: Config) -> Config:
    return base if base.prompted else base.replace(**PROMPTED).validate("study part 'prompted'")


def run_prompted(base: Config, study_dir: Path, fresh: bool = False, log=print) -> dict:
    """The prompted part: its run (reused when current) and what the study keeps of its report."""
    cfg, run_dir = prompted_config(base), study_dir / "variants" / "prompted"
    report = None if fresh else _current_report(run_dir, cfg)
    if report is None:
        t0 = time.perf_counter()
        _run_variant(cfg.to_dict(), str(run_dir), None)
        log(f"study: prompted run done in {time.perf_counter() - t0:.0f} s")
        report = _current_report(run_dir, cfg)
        if report is None:
            raise RuntimeError(f"study: the prompted run left no current report in {run_dir}")
    else:
        log(f"study: prompted: reusing {run_dir}")
    pr = report["prompted"]
    keep = ("prompt", "n", "miss", "honoured", "extrapolation")
    return {"run_dir": str(run_dir), "changes": {} if base.prompted else PROMPTED, "prompt_range": pr["prompt_range"],
            "calibration": [{**{k: r[k] for k in keep}, "val_median": r["val"]["median"],
                             "test_median": r["test"]["median"]} for r in pr["calibration"]],
            "highest_honoured": pr["highest_honoured"], "judged_prompt": pr["judged_prompt"],
            "judged_originals": pr["judged_originals"], "original": report["original"], **generated_fields(report),
            "baselines": {name: b["median"] for name, b in report["baselines"].items()}}


# --- reading: sentences computed from the tables -------------------------------------------

def _delta(a: float, b: float) -> str:
    return f"{a - b:+.2f}"


def read_ablation(rows: list[dict]) -> list[str]:
    by = {r["variant"]: r for r in rows}
    if "default" not in by:
        return []
    d = by["default"]["generated"]
    out = []
    for r in rows:
        if r["variant"] == "default":
            continue
        g = r["generated"]
        out.append(f"{r['variant']}: generated mean {g['mean']:.2f} ({_delta(g['mean'], d['mean'])} against the "
                   f"default), median {g['median']:.2f} ({_delta(g['median'], d['median'])}), best {g['best']:.2f}; "
                   f"verdict {r['verdict']['label']} (default: {by['default']['verdict']['label']}).")
    return out


def read_finetune(result: dict) -> list[str]:
    if not result:
        return []
    last = str(max(result["epochs"]))
    first = str(min(result["epochs"]))
    parts = [f"{name}: {s['summary'][first]['median']:.2f} -> {s['summary'][last]['median']:.2f}"
             for name, s in result["starts"].items()]
    return [f"Median test accuracy after {first} -> {last} epochs: " + "; ".join(parts) + "."]


def read_prompted(pr: dict, ablation: list[dict] | None = None) -> list[str]:
    inside = [r for r in pr["calibration"] if not r["extrapolation"]]
    honoured = [r["prompt"] for r in pr["calibration"] if r["honoured"]]
    out = [f"{len(honoured)} of {len(pr['calibration'])} prompts honoured"
           + (f" ({', '.join(f'{p:.2f}' for p in honoured)})" if honoured else "")
           + f"; mean absolute miss over the {len(inside)} prompts in the checkpoints' range "
           f"{sum(abs(r['miss']) for r in inside) / max(1, len(inside)):.2f} points."]
    g, o = pr["generated"], pr["original"]
    above = [n for n, v in pr["baselines"].items() if g["median"] > v]
    out.append(f"At prompt {pr['judged_prompt']:.2f}: generated median {g['median']:.2f} against {o['median']:.2f} for "
               f"the {pr['judged_originals']} checkpoints that reach it; above {len(above)} of "
               f"{len(pr['baselines'])} baselines' medians; verdict {pr['verdict']['label']}.")
    default = next((r for r in ablation or [] if r["variant"] == "default"), None)
    if default:
        out.append(f"The unprompted default run's generated median: {default['generated']['median']:.2f} "
                   f"(its originals {default['original']['median']:.2f}).")
    return out


# --- tables and plots ------------------------------------------------------------------------

def _acc(s: dict) -> str:
    return f"{s['best']:.2f} / {s['mean']:.2f} / {s['median']:.2f}"


def _ratio(v) -> str:
    return "–" if v is None or v != v else f"{v:.2f}"


def format_study(study: dict) -> str:
    jobs = f", ablation variants {study.get('jobs', '?')} at a time" if study.get("ablation") else ""
    lines = [f"# p-diff study ({study.get('device', '?')}, torch {study.get('torch', '?')}, {study.get('cpus', '?')} "
             f"CPUs{jobs})", ""]
    rows = study.get("ablation")
    if rows:
        lines += ["## Ablation", "",
                  "| variant | K | D | original best / mean / median | generated best / mean / median | "
                  "nearest-original distance / tau | max IoU (mean) | new and better | verdict | time (s) |",
                  "|---|---:|---:|---|---|---:|---:|---:|---|---:|"]
        for r in rows:
            nb = r["novelty"]["new_and_better"]
            lines.append(f"| {r['variant']} | {r['k']} | {r['dim']} | {_acc(r['original'])} | {_acc(r['generated'])} | "
                         f"{_ratio(r['novelty']['distance_ratio'])} | {r['max_iou_mean']:.3f} | "
                         f"{'–' if nb is None else f'{100 * nb:.1f}%'} | {r['verdict']['label']}, accuracy "
                         f"{r['verdict']['accuracy']} the originals | {r['seconds']:.0f} |")
        lines += [""] + [f"- {s}" for s in read_ablation(rows)] + [""]
    rows = study.get("sampler")
    if rows:
        lines += format_samplers(rows, _ratio, _acc)
    ft = study.get("finetune")
    if ft:
        from ..evaluation.finetuning import format_finetune_table

        lines += ["## Fine-tuning from generated parameters", "", format_finetune_table(ft), ""]
        lines += [f"- {s}" for s in read_finetune(ft)] + [""]
    pr = study.get("prompted")
    if pr:
        changes = ", ".join(f"{k} {v}" for k, v in pr["changes"].items())
        made = f"The base config with {changes}" if changes else "The base config (prompted) as it is"
        lines += ["## Prompted generation", "", f"{made}, in variants/prompted; the checkpoints' validation accuracy spans "
                  f"{pr['prompt_range'][0]:.2f}..{pr['prompt_range'][1]:.2f}.", "",
                  "| prompt (val %) | models | val median | test median | miss | honoured |", "|---:|---:|---:|---:|---:|---|"]
        for r in pr["calibration"]:
            tag = ("yes" if r["honoured"] else "no") + (" (above every checkpoint)" if r["extrapolation"] else "")
            lines.append(f"| {r['prompt']:.2f} | {r['n']} | {r['val_median']:.2f} | {r['test_median']:.2f} | "
                         f"{r['miss']:+.2f} | {tag} |")
        lines += [""] + [f"- {s}" for s in read_prompted(pr, study.get("ablation"))] + [""]
    if study.get("seconds"):
        lines.append("Wall time of the parts run by this call: " +
                     ", ".join(f"{k} {v:.0f} s" for k, v in study["seconds"].items()) + ".")
    return "\n".join(lines) + "\n"


def plot_study(study: dict, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .report import _save

    paths = []
    rows = study.get("ablation")
    if rows:
        fig, ax = plt.subplots(figsize=(7, 4))
        names = [r["variant"] for r in rows]
        med = [r["generated"]["median"] for r in rows]
        lo = [r["generated"]["median"] - min(r["generated"]["mean"], r["generated"]["median"]) for r in rows]
        ax.errorbar(range(len(rows)), med, yerr=[lo, [0] * len(rows)], fmt="o", label="generated median (bar: to mean)")
        ax.scatter(range(len(rows)), [r["generated"]["best"] for r in rows], marker="^", label="generated best")
        ax.scatter(range(len(rows)), [r["original"]["median"] for r in rows], marker="x", label="original median")
        ax.set_xticks(range(len(rows)), names, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("test accuracy (%)")
        hi, low = max(rows, key=lambda r: r["generated"]["median"]), min(rows, key=lambda r: r["generated"]["median"])
        ax.set_title(f"Generated median accuracy: highest {hi['variant']} {hi['generated']['median']:.2f}, "
                     f"lowest {low['variant']} {low['generated']['median']:.2f}", fontsize=9)
        ax.legend(fontsize=7)
        paths.append(_save(fig, out_dir / "study_ablation.png"))
        plt.close(fig)
    if study.get("sampler"):
        paths.append(plot_samplers(study["sampler"], out_dir / "study_sampler.png"))
    if study.get("finetune"):
        from ..evaluation.finetuning import plot_finetune

        paths.append(plot_finetune(study["finetune"], out_dir / "study_finetune.png"))
    return paths


def run_study(base: Config, study_dir, *, parts=PARTS, jobs: int | None = None, fresh: bool = False,
              finetune_models: int = 20, samplers=SAMPLERS, variants=None, log=print) -> dict:
    """Run the asked parts (PARTS) and write study.json / study.md / plots under study_dir."""
    from ..io import load_json, save_json, save_text
    from .pdiff import pick_device
    from .run_dir import prepare_run_dir

    unknown = set(parts) - set(PARTS)
    if unknown:
        raise ValueError(f"study: unknown part(s) {sorted(unknown)}; choose from {list(PARTS)}")
    unknown = set(variants or ()) - set(VARIANTS)
    if unknown:
        raise ValueError(f"study: unknown variant(s) {sorted(unknown)}; choose from {list(VARIANTS)}")
    base = base.validate()
    if base.prompted and set(parts) - {"prompted"}:
        raise ValueError(f"study: a prompted config runs the part 'prompted' only (asked for {', '.join(parts)}): "
                         "the other parts are p-diff's; give an unprompted config, whose prompted part is made from it")
    study_dir = prepare_run_dir(Path(study_dir))
    path = study_dir / "study.json"
    study = {}
    if path.is_file() and not fresh:
        old = load_json(path)
        if isinstance(old, dict) and old.get("config") == base.to_dict():
            study = old  # other parts from an earlier call with the same config stay
    study.update({"config": base.to_dict(), "seconds": {}, "device": str(pick_device(base.device)),
                  "torch": torch.__version__, "cpus": os.cpu_count(), "jobs": jobs or default_jobs(base.device)})

    def write():
        save_json(path, study)
        save_text(study_dir / "study.md", format_study(study))
        plot_study(study, study_dir)

    for part in PARTS:
        if part not in parts:
            continue
        t0 = time.perf_counter()
        if part == "ablation":
            study["ablation"] = run_ablation(base, study_dir, names=variants, jobs=jobs, fresh=fresh, log=log)
        elif part == "prompted":
            study["prompted"] = run_prompted(base, study_dir, fresh, log)
        else:
            p = _default_run(base, study_dir, fresh and "ablation" not in parts, log)
            if part == "sampler":
                study["sampler"] = run_samplers(p, samplers, log=log)
            else:
                study["finetune"] = run_finetune(p, finetune_models, log=log)
        study["seconds"][part] = time.perf_counter() - t0
        write()
    return study
