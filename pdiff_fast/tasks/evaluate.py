"""The `tasks evaluate` step (EvaluateStep, a base of TaskPDiff): every method's no-training accuracy
on every task against the baselines (random init, zoo mean, nearest task, the zoo itself), the
guidance sweep, and fine-tuning curves on the held-out tasks from each start; writes report.json,
report.md and the plots (pdiff_fast.tasks.report)."""
from __future__ import annotations

import time

import torch

from ..io import save_json, save_text
from . import report as task_report
from .conditional import ConditionedDenoiser
from .generator import GeneratorStep
from .zoo import Zoo, train_models

RANDOM_INIT_SEED = 10_000  # random-initialisation baselines: seeds RANDOM_INIT_SEED + j, apart from the zoo's
FINETUNE_RECORD = (0, 1, 2, 3, 4, 6, 8, 11, 16, 23, 32, 45, 64, 91, 128, 181, 256, 362, 512)
GUIDANCE_SWEEP = (0.0, 1.0, 2.0, 4.0)  # classifier-free guidance scales measured on the held-out tasks


class EvaluateStep(GeneratorStep):
    def random_inits(self, n: int) -> torch.Tensor:
        """(n, D): the network at PyTorch's default initialisation, seeds RANDOM_INIT_SEED + j."""
        spec = self.spec()
        return torch.cat([spec.flatten([self.new_model(RANDOM_INIT_SEED + j)]) for j in range(n)]).cpu()

    def nearest_seen(self, model: ConditionedDenoiser, tasks) -> list[int]:
        """For each task, the seen task whose embedding is nearest (never the task itself)."""
        emb, seen_emb = self.embed(model, tasks), self.embed(model, self.seen)
        d = torch.cdist(emb, seen_emb)
        for i, t in enumerate(tasks):
            if t in self.seen:
                d[i, self.seen.index(t)] = float("inf")
        return d.argmin(1).tolist()

    def evaluate(self) -> dict:
        """Zero-shot accuracy of every method on every task, fine-tuning on the held-out tasks; writes the
        report (JSON, Markdown, plots)."""
        c = self.config
        loaded = self.load_generator()
        zoo, _, model, _, gen_digest = loaded
        t, _, generated_digest = self._load("generated", {"generator": gen_digest})
        tasks = self.seen + self.held_out
        nearest = self.nearest_seen(model, tasks)
        randoms = self.random_inits(max(c.samples_per_task, c.finetune_models))
        mean = zoo.params.mean(0, keepdim=True)
        per_task = {}
        start = time.perf_counter()
        for i, task in enumerate(tasks):
            sets = {"generated": t["params"][t["task"] == self.family.tasks.index(task)],
                    "unconditional": t["unconditional"], "random init": randoms[:c.samples_per_task],
                    "zoo mean": mean, "nearest task": zoo.rows_of(nearest[i])}
            if task in self.seen:
                sets["zoo (own task)"] = zoo.rows_of(self.seen.index(task))
            acc = self.accuracy(task, torch.cat(list(sets.values()))).tolist()
            per_task[task.name] = {"split": "seen" if task in self.seen else "held out",
                                   "nearest": self.seen[nearest[i]].name, "accuracy": {}}
            r0 = 0
            for name, rows in sets.items():
                per_task[task.name]["accuracy"][name] = acc[r0:r0 + len(rows)]
                r0 += len(rows)
        self.timings["evaluate_zero_shot"] = time.perf_counter() - start
        sweep = self._timed("guidance_sweep", lambda: self._guidance_sweep(t, loaded))
        record, curves = self._timed("finetune", lambda: self._finetune(t, randoms, zoo, nearest[len(self.seen):]))
        zero_shot, finetune = task_report.summarize_zero_shot(per_task), task_report.summarize_finetune(record, curves)
        timings = {**self.saved_timings(), **self.timings}
        report = {"config": c.to_dict(), "device": str(self.device),
                  "tasks": {"seen": [x.name for x in self.seen], "held out": [x.name for x in self.held_out]},
                  "zoo": {"models": len(zoo.params),
                          "models_per_second": timings.get("zoo_models_per_second", zoo.meta.get("models_per_second")),
                          "loop_models_per_second": timings.get("zoo_loop_models_per_second",
                                                                zoo.meta.get("loop_models_per_second")),
                          "median_accuracy": float(zoo.accuracy.median())},
                  "zero_shot": zero_shot, "guidance_sweep": sweep, "finetune": finetune, "finetune_record": record,
                  "finetune_curves": curves, "finetune_steps": c.finetune_steps, "finetune_lr": c.finetune_lr,
                  "batch_size": c.batch_size, "targets": task_report.targets(zero_shot, finetune),
                  "per_task": per_task, "timings": timings,
                  "inputs": {"generator": gen_digest, "generated": generated_digest}}
        save_json(self.path("report"), report)
        save_text(self.path("table"), task_report.format_report(report))
        self._bookkeeping("report", config=False)
        task_report.plot_report(report, self.run_dir)
        return report

    def _guidance_sweep(self, generated: dict, loaded) -> dict:
        """Held-out tasks' mean accuracy (over tasks, of each task's mean over its models) at each guidance
        scale of GUIDANCE_SWEEP and the configured one (taken from `generated`)."""
        c = self.config
        n = c.samples_per_task
        out = {}
        for scale in sorted({*GUIDANCE_SWEEP, c.guidance}):
            if scale == c.guidance:
                rows = [generated["params"][generated["task"] == self.family.tasks.index(t)] for t in self.held_out]
            else:
                flat = self.generate(self.held_out, guidance=scale, loaded=loaded).cpu()
                rows = [flat[i * n:(i + 1) * n] for i in range(len(self.held_out))]
            scores = [float(self.accuracy(t, r).mean()) for t, r in zip(self.held_out, rows)]
            out[f"{scale:g}"] = {"mean": sum(scores) / len(scores), "worst": min(scores)}
        return out

    def _finetune(self, generated: dict, randoms: torch.Tensor, zoo: Zoo, nearest: list[int]):
        """Train finetune_models rows per start on each held-out task; every start's row j of a task sees the
        same batches (train_models draws them from (seed, row), and each start is its own call)."""
        c = self.config
        n = c.finetune_models
        x, y, counts = self.stacked(self.held_out)
        record = sorted({s for s in FINETUNE_RECORD if s < c.finetune_steps} | {c.finetune_steps})
        starts: dict[str, list[torch.Tensor]] = {name: [] for name in task_report.STARTS}
        for h, task in enumerate(self.held_out):
            gen = generated["params"][generated["task"] == self.family.tasks.index(task)]
            starts["generated"].append(_cycle(gen, n))
            starts["random"].append(randoms[:n])
            starts["nearest task"].append(_cycle(zoo.rows_of(nearest[h]), n))
        task_of_row = torch.arange(len(self.held_out)).repeat_interleave(n).to(self.device)
        model, spec = self.base_model(), self.spec()
        curves = {}
        for name, parts in starts.items():
            snaps = train_models(model, spec, torch.cat(parts).to(self.device), x, y, counts, task_of_row,
                                 steps=c.finetune_steps, lr=c.finetune_lr, batch_size=c.batch_size,
                                 seed=c.seed + 1, record_at=record, memory_budget_bytes=c.memory_budget_mb << 20)
            rows = []
            for h, task in enumerate(self.held_out):
                sel = task_of_row == h
                acc = self.accuracy(task, torch.cat([s[sel] for s in snaps])).reshape(len(record), n)
                rows += acc.T.tolist()
            curves[name] = rows
        return record, curves


def _cycle(rows: torch.Tensor, n: int) -> torch.Tensor:
    """n rows: rows repeated in order when there are fewer than n."""
    return rows[torch.arange(n) % len(rows)]
