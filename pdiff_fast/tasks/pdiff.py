"""`pdiff-fast tasks`: dataset-conditioned generation (D2NWG) end to end, in one run directory.

    p = TaskPDiff(TaskConfig(), "runs/tasks")
    p.zoo()        # one MLP per run per seen task, all trained at once (pdiff_fast.tasks.zoo) -> zoo.safetensors
    p.train()      # parameter autoencoder + task-conditioned latent diffusion -> generator.safetensors
    p.sample()     # models for every task, seen and held out, in one batch -> generated.safetensors
    p.evaluate()   # no-training accuracy against the baselines, fine-tuning curves -> report.json / .md, plots

The task family is pdiff_fast.tasks.family (the 90 ordered digit pairs; whole pairs held out). The
network is the digits MLP (64 -> hidden -> 2) and the generator makes all of its parameters.
Every zoo model starts from one shared initialisation (the network built with `seed`), so the
zoo's models of different tasks differ by what their tasks taught them, not by their starts.

Held-out tasks never reach training: the zoo holds seen tasks only, and the generator is
trained on the zoo and on support sets drawn from the zoo's tasks. Held-out tasks' data is read
only by `sample` (their support sets) and `evaluate` (their test sets, fine-tuning).

Every artifact records the config fields it was made with and the digests of the files it was
made from; a step that reads it with other settings or other inputs refuses, naming the step to
rerun (allow_stale=True overrides), as the p-diff pipeline's run directory does.
"""
from __future__ import annotations
import time

import torch

from ..io import save_tensors
from ..pipeline.capacity import check_fits
from ..pipeline.run_dir import check_report_inputs, read_remade_by
from . import report as task_report
from .config import TaskConfig  # noqa: F401
from .evaluate import EvaluateStep
from .family import task_by_name
from .zoo import Zoo, train_models, train_one

LOOP_ROWS = 16  # zoo rows also trained one at a time, to measure the loop's speed against the batched zoo


class TaskPDiff(EvaluateStep):
    """The steps in order: zoo, train (pdiff_fast.tasks.generator), sample, evaluate
    (pdiff_fast.tasks.evaluate); `run` does them all. What they share is TaskParts' (pdiff_fast.tasks.parts)."""

    # --- steps --------------------------------------------------------------------------
    def zoo(self) -> Zoo:
        """Train zoo_runs models for every seen task from the shared start, all at once."""
        c = self.config
        model, spec = self.base_model(), self.spec()
        init = spec.flatten([model])[0]
        check_fits(f"tasks zoo: {c.zoo_runs} runs x {len(self.seen)} tasks", c.zoo_runs * len(self.seen), spec.dim,
                   self.run_dir, copies=4, device=self.device)  # parameters, momentum, gradients, the result
        n_tasks = len(self.seen) + len(self.held_out)
        check_fits(f"tasks sample: {c.samples_per_task} models x {n_tasks} tasks", c.samples_per_task * n_tasks,
                   spec.dim, self.run_dir, copies=3)  # what `sample` will make, checked before the zoo trains
        x, y, counts = self.stacked(self.seen)
        task = torch.arange(len(self.seen)).repeat_interleave(c.zoo_runs)
        run = torch.arange(c.zoo_runs).repeat(len(self.seen))
        starts = init.to(self.device).expand(len(task), -1)
        self.log(f"zoo: training {len(task)} models ({c.zoo_runs} per seen task, {len(self.seen)} tasks) at once")
        params = self._timed("zoo_train", lambda: train_models(
            model, spec, starts, x, y, counts, task.to(self.device), steps=c.zoo_steps, lr=c.zoo_lr,
            batch_size=c.batch_size, seed=c.seed, memory_budget_bytes=c.memory_budget_mb << 20)[-1])
        loop_rate, loop_gap = self._loop_rate(model, spec, starts, x, y, counts, task, params)
        accuracy = torch.empty(len(task))
        for i, t in enumerate(self.seen):
            rows = task == i
            accuracy[rows] = self.accuracy(t, params[rows.to(params.device)])
        # speeds go to timings.json, not into the zoo: the same config and seed give the same zoo file, byte for byte
        self.timings["zoo_models_per_second"] = len(task) / self.timings["zoo_train"]
        self.timings["zoo_loop_models_per_second"] = loop_rate
        zoo = Zoo(params.cpu(), task, run, accuracy, init.cpu(), spec, [t.name for t in self.seen],
                  {"family": "digit-pairs", "held_out": [t.name for t in self.held_out],
                   "loop_max_abs_difference": loop_gap})
        zoo.meta["config"], zoo.meta["inputs"] = self._fields("zoo"), {}
        zoo.save(self.path("zoo"))
        self._bookkeeping("zoo")
        self.log(f"zoo: {len(task)} models in {self.timings['zoo_train']:.1f} s "
                 f"({self.timings['zoo_models_per_second']:.1f} models/s; a loop of one model at a time: "
                 f"{loop_rate:.1f} models/s); test accuracy median {accuracy.median():.2f}")
        return zoo

    def current_zoo(self) -> Zoo | None:
        """The zoo on disk when it is intact and made with this config's zoo fields (else None): `run`
        after an interruption keeps it instead of training it again."""
        try:
            zoo, _ = self.load_zoo()
        except (ValueError, OSError):
            return None
        return zoo if zoo.meta.get("config") == self._fields("zoo") else None

    def _loop_rate(self, model, spec, starts, x, y, counts, task, params, rows: int = LOOP_ROWS):
        """Models per second of the one-at-a-time loop (zoo.train_one) on the first `rows` zoo rows, and the
        largest difference from the batched result of those rows (they train on the same batches)."""
        c = self.config
        rows = min(rows, len(task))
        start = time.perf_counter()
        loop = [train_one(model, spec, starts[r], x[task[r], :counts[task[r]]], y[task[r], :counts[task[r]]],
                          steps=c.zoo_steps, lr=c.zoo_lr, batch_size=c.batch_size, seed=c.seed, row=r)[-1]
                for r in range(rows)]
        rate = rows / (time.perf_counter() - start)
        return rate, float((torch.stack(loop) - params[:rows]).abs().max())
    def sample(self) -> dict[str, torch.Tensor]:
        """samples_per_task models for every task (seen and held out) at the config's guidance, and as many
        from the same generator without conditioning (guidance 0)."""
        c = self.config
        tasks = self.seen + self.held_out
        check_fits(f"tasks sample: {c.samples_per_task} models x {len(tasks)} tasks", c.samples_per_task * len(tasks),
                   self.spec().dim, self.run_dir, copies=3, device=self.device)
        loaded = self.load_generator()
        flat = self._timed("sample", lambda: self.generate(tasks, loaded=loaded))
        uncond = self.generate(tasks[:1], guidance=0.0, loaded=loaded)  # the null condition ignores the task
        index = torch.tensor([self.family.tasks.index(t) for t in tasks]).repeat_interleave(c.samples_per_task)
        out = {"params": flat.cpu(), "task": index, "unconditional": uncond.cpu()}
        self._save("generated", out, {"tasks": self.family.names}, {"generator": loaded[-1]})
        self.log(f"generated {len(flat)} models ({c.samples_per_task} for each of {len(tasks)} tasks) in "
                 f"{self.timings['sample']:.1f} s -> {self.path('generated')}")
        return out
    def report(self) -> str:
        path = self.path("report")
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing; run `pdiff-fast tasks evaluate` first")
        from ..io import load_json

        report = read_remade_by(lambda: load_json(path), "pdiff-fast tasks evaluate")
        if not isinstance(report, dict):
            raise ValueError(f"{path}: not a report of this package; rerun `pdiff-fast tasks evaluate`")
        check_report_inputs(self, report, "pdiff-fast tasks evaluate")
        try:
            table = self.format_report(report)
        except (KeyError, TypeError, AttributeError, IndexError, ValueError) as exc:  # hand-edited or foreign
            raise ValueError(f"{path}: not a report this version can read ({type(exc).__name__}: {exc}); "
                             "rerun `pdiff-fast tasks evaluate`") from None
        return table

    def format_report(self, report: dict) -> str:
        """report.md's text, and the plots."""
        task_report.plot_report(report, self.run_dir)
        return task_report.format_report(report)

    def zoo_unless_current(self) -> Zoo:
        """`run`'s first step: the zoo on disk when it is current, else a new one."""
        zoo = self.current_zoo()
        if zoo is None:
            return self.zoo()
        self.log(f"keeping the zoo in {self.path('zoo')} (made with this config)")
        return zoo

    def run(self) -> dict:
        self.zoo_unless_current()
        self.train()
        self.sample()
        return self.evaluate()



def sample_tasks(p: TaskPDiff, names: list[str], n: int | None = None, guidance: float | None = None) -> dict:
    """Models for the named tasks (seen or held out): saved to <run_dir>/samples/<task>.safetensors with their
    test accuracy; returns {task: [accuracy per model]}."""
    tasks = [task_by_name(p.family.tasks, name) for name in names]
    loaded = p.load_generator()
    n = n or p.config.samples_per_task
    flat = p.generate(tasks, n, guidance, loaded=loaded).cpu()
    out = {}
    for i, task in enumerate(tasks):
        rows = flat[i * n:(i + 1) * n]
        acc = p.accuracy(task, rows)
        scale = p.config.guidance if guidance is None else guidance
        save_tensors(p.run_dir / "samples" / f"{task.name}.safetensors", {"params": rows, "accuracy": acc},
                     {"task": task.name, "guidance": scale, "spec": p.spec().to_dict(),
                      "split": "seen" if task in p.seen else "held out", "inputs": {"generator": loaded[-1]}})
        out[task.name] = acc.tolist()
    return out
