"""PromptedTaskPDiff: dataset-conditioned generation (pdiff_fast.tasks) that also takes the accuracy
asked for: weights for a task, seen or held out, at a chosen validation accuracy.

    from pdiff_fast.tasks import TaskConfig
    from pdiff_fast.prompted import PromptedTaskPDiff
    p = PromptedTaskPDiff(TaskConfig(prompted=True), "runs/tasks-prompted")
    p.run()      # zoo (span), train, sample the calibration sweep for every task, evaluate, report

The steps are TaskPDiff's (same files, provenance and resumable training), except:
- the data: a validation split (`val_fraction` of the digits' training images, seeded by `seed`) is
  carved out before the tasks are cut; zoo models train on the rest, and support sets are drawn
  from the rest. Each task's validation rows label the zoo; its test rows only score;
- zoo: every run of every seen task is recorded after each of its zoo_steps SGD steps (a lower
  zoo_lr than the unprompted zoo's, so the climb from the shared start at 50% passes every
  accuracy); each step is labelled with its validation accuracy on its task, and the run keeps
  `span_keep` of them chosen evenly in that accuracy (pipeline.span.even_in_accuracy);
- train: the condition is the task's support set and the row's normalised validation accuracy,
  their embeddings added (encoder.TaskAndAccuracy); `cond_drop` of the rows train the null
  embedding, which stands for both;
- sample: `samples_per_task` models per task, spread over the prompts (`prompt_accuracy`, default the
  calibration sweep of pdiff_fast.prompted.prompts over the zoo's validation range);
- evaluate: pdiff_fast.prompted.task_calibration: per split (seen / held out) and prompt, the achieved
  validation and test accuracy; the highest prompt honoured; its models against the baselines.
"""
from __future__ import annotations

import torch

from ..data import TensorData, carve_validation
from ..io import save_json, save_text
from ..pipeline.capacity import check_fits
from ..pipeline.span import even_in_accuracy
from ..tasks.family import TaskFamily, support
from ..tasks.pdiff import TaskPDiff
from ..tasks.zoo import Zoo, train_models
from . import task_calibration
from .encoder import AccuracyEncoder, TaskAndAccuracy
from .prompts import check_prompts, default_prompts, normalise, spread


class PromptedTaskPDiff(TaskPDiff):
    PROMPTED = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        c = self.config
        train, x_val, y_val = carve_validation(self.family.source, c.val_fraction, c.seed)
        self.family = TaskFamily(self.family.tasks, train)  # training and support sets: the rest
        self.validation = TaskFamily(self.family.tasks, TensorData(
            f"{train.name} validation", x_val, y_val, x_val, y_val, train.num_classes))  # its x_test: validation

    # --- zoo ---------------------------------------------------------------------------------
    def val_accuracy(self, task, flat: torch.Tensor) -> torch.Tensor:
        """(n,) accuracy (percent) of the rows of flat on the task's validation rows."""
        return self.scored(self.validation.data(task), flat)

    def zoo(self) -> Zoo:
        c = self.config
        if c.span_keep > c.zoo_steps:
            raise ValueError(f"span_keep={c.span_keep} checkpoints per run cannot be chosen from zoo_steps="
                             f"{c.zoo_steps} steps")
        model, spec = self.base_model(), self.spec()
        init = spec.flatten([model])[0]
        runs = c.zoo_runs * len(self.seen)
        check_fits(f"tasks zoo: {runs} runs x {c.zoo_steps} recorded steps", runs * c.zoo_steps, spec.dim,
                   self.run_dir, copies=2, device=self.device)
        x, y, counts = self.stacked(self.seen)
        task = torch.arange(len(self.seen)).repeat_interleave(c.zoo_runs)
        run = torch.arange(c.zoo_runs).repeat(len(self.seen))
        steps = list(range(1, c.zoo_steps + 1))
        self.log(f"zoo: training {runs} runs ({c.zoo_runs} per seen task) at once, every step recorded")
        snaps = self._timed("zoo_train", lambda: train_models(
            model, spec, init.to(self.device).expand(runs, -1), x, y, counts, task.to(self.device),
            steps=c.zoo_steps, lr=c.zoo_lr, batch_size=c.batch_size, seed=c.seed, record_at=steps,
            memory_budget_bytes=c.memory_budget_mb << 20))
        snaps = torch.stack([s.cpu() for s in snaps])  # (steps, runs, D)
        val = torch.empty(len(steps), runs)
        for i, t in enumerate(self.seen):
            rows = task == i
            val[:, rows] = self.val_accuracy(t, snaps[:, rows].reshape(-1, spec.dim)).reshape(len(steps), -1)
        keep = [even_in_accuracy(val[:, r].tolist(), c.span_keep) for r in range(runs)]  # step indices per run
        params = torch.stack([snaps[j, r] for r in range(runs) for j in keep[r]])
        rows = torch.arange(runs).repeat_interleave(c.span_keep)
        val_acc = torch.tensor([float(val[j, r]) for r in range(runs) for j in keep[r]])
        step = torch.tensor([steps[j] for r in range(runs) for j in keep[r]])
        accuracy = torch.empty(len(params))
        for i, t in enumerate(self.seen):  # test accuracy: recorded to score, never to choose
            mine = task[rows] == i
            accuracy[mine] = self.accuracy(t, params[mine])
        self.timings["zoo_models_per_second"] = runs / self.timings["zoo_train"]
        zoo = Zoo(params, task[rows], run[rows], accuracy, init.cpu(), spec, [t.name for t in self.seen],
                  {"family": "digit-pairs", "held_out": [t.name for t in self.held_out], "recipe": "span",
                   "n_val": len(self.validation.source.y_train), "val_fraction": c.val_fraction},
                  val_accuracy=val_acc, step=step)
        zoo.meta["config"], zoo.meta["inputs"] = self._fields("zoo"), {}
        zoo.save(self.path("zoo"))
        self._bookkeeping("zoo")
        self.log(f"zoo: {len(zoo)} checkpoints ({c.span_keep} per run) spanning {val_acc.min():.2f}..{val_acc.max():.2f}"
                 f"% on validation in {self.timings['zoo_train']:.1f} s")
        return zoo

    @staticmethod
    def prompt_range(zoo: Zoo) -> tuple[float, float]:
        if zoo.val_accuracy is None:
            raise ValueError("the zoo carries no validation accuracy; rerun `pdiff-fast tasks zoo` with prompted: true")
        return float(zoo.val_accuracy.min()), float(zoo.val_accuracy.max())

    # --- train -------------------------------------------------------------------------------
    def _condition_encoder(self, features: int) -> torch.nn.Module:
        return TaskAndAccuracy(super()._condition_encoder(features), AccuracyEncoder(out_dim=self.config.embed_dim))

    def _conditions(self, zoo: Zoo):
        """Keyed by zoo row: the row's task gives a fresh support set, the row its normalised validation accuracy."""
        c = self.config
        sx, sy, counts = self.stacked(self.seen)
        a = normalise(zoo.val_accuracy, *self.prompt_range(zoo)).to(self.device)
        task = zoo.task.to(self.device)

        def draw(rows, gen):
            return support(sx, sy, counts, task[rows], c.support, gen, self.family.num_classes), a[rows]
        return torch.arange(len(zoo), device=self.device), draw

    # --- sample ------------------------------------------------------------------------------
    def embed(self, model, tasks) -> torch.Tensor:
        """The tasks' set embeddings alone (nearest task; generate adds the prompts')."""
        with torch.no_grad():
            return model.encoder.sets(self.support_sets(tasks))

    def prompts(self, lo: float, hi: float) -> list[float]:
        c = self.config
        if c.prompt_accuracy is None:
            return default_prompts(lo, hi)
        return check_prompts(c.prompt_accuracy, lo, hi, c.prompt_extrapolate)

    def per_model_prompts(self, zoo: Zoo, n: int) -> torch.Tensor:
        return spread(self.prompts(*self.prompt_range(zoo)), n)

    def generate(self, tasks, n: int | None = None, guidance: float | None = None, loaded=None,
                 scheduler=None) -> torch.Tensor:
        """n models per task (default samples_per_task), task-major, each task's spread over the prompts
        (per_model_prompts): (len(tasks) * n, D)."""
        from ..diffusion.samplers import make_scheduler
        from ..tasks.conditional import generate_conditioned

        c = self.config
        n = n or c.samples_per_task
        zoo, ae, model, std, _ = loaded or self.load_generator()
        lo, hi = self.prompt_range(zoo)
        prompt = self.per_model_prompts(zoo, n)
        with torch.no_grad():
            sets = self.embed(model, tasks)  # (T, E)
            acc = model.encoder.accuracy(normalise(prompt, lo, hi).to(self.device))  # (n, E)
        emb = (sets[:, None] + acc[None]).reshape(-1, sets.shape[1])
        flat = generate_conditioned(ae, model, scheduler or make_scheduler(c.sampler, c.sample_steps, c.eta),
                                    emb, c.guidance if guidance is None else guidance, seed=c.seed,
                                    device=self.device, memory_budget_bytes=c.memory_budget_mb << 20,
                                    progress=self.progress)
        return std.inverse(flat) if std is not None else flat

    def sample(self) -> dict[str, torch.Tensor]:
        c = self.config
        tasks = self.seen + self.held_out
        check_fits(f"tasks sample: {c.samples_per_task} models x {len(tasks)} tasks", c.samples_per_task * len(tasks),
                   self.spec().dim, self.run_dir, copies=3, device=self.device)
        loaded = self.load_generator()
        prompt = self.per_model_prompts(loaded[0], c.samples_per_task)
        flat = self._timed("sample", lambda: self.generate(tasks, loaded=loaded))
        index = torch.tensor([self.family.tasks.index(t) for t in tasks]).repeat_interleave(c.samples_per_task)
        out = {"params": flat.cpu(), "task": index, "prompt": prompt.repeat(len(tasks))}
        self._save("generated", out, {"tasks": self.family.names, "prompt_range": list(self.prompt_range(loaded[0]))},
                   {"generator": loaded[-1]})
        self.log(f"generated {len(flat)} models ({c.samples_per_task} for each of {len(tasks)} tasks, over "
                 f"{len(set(prompt.tolist()))} prompts) in {self.timings['sample']:.1f} s -> {self.path('generated')}")
        return out

    # --- evaluate ----------------------------------------------------------------------------
    def evaluate(self) -> dict:
        """Per task: the generated models' validation and test accuracy with their prompts, and the baselines'
        test accuracy with the validation accuracy they were labelled with; summarised by task_calibration."""
        c = self.config
        zoo, _, model, _, gen_digest = loaded = self.load_generator()
        t, _, generated_digest = self._load("generated", {"generator": gen_digest})
        if "prompt" not in t:
            raise ValueError(f"{self.path('generated')}: not a prompted generated-models file (no 'prompt' tensor); "
                             "rerun `pdiff-fast tasks sample`")
        del loaded
        tasks = self.seen + self.held_out
        nearest = self.nearest_seen(model, tasks)
        randoms = self.random_inits(c.samples_per_task)
        mean = zoo.params.mean(0, keepdim=True)
        per_task = {}
        for i, task in enumerate(tasks):
            mine = t["task"] == self.family.tasks.index(task)
            near = zoo.task == nearest[i]
            sets = {"generated": t["params"][mine], "random init": randoms, "zoo mean": mean,
                    "nearest task": zoo.params[near]}
            labels = {"nearest task": zoo.val_accuracy[near].tolist()}
            if task in self.seen:
                own = zoo.task == self.seen.index(task)
                sets["zoo (own task)"] = zoo.params[own]
                labels["zoo (own task)"] = zoo.val_accuracy[own].tolist()
            test = self.accuracy(task, torch.cat(list(sets.values()))).tolist()
            entry = {"split": "seen" if task in self.seen else "held out", "nearest": self.seen[nearest[i]].name,
                     "prompt": t["prompt"][mine].tolist(), "val": self.val_accuracy(task, sets["generated"]).tolist(),
                     "test": {}, "labels": labels}
            r0 = 0
            for name, rows in sets.items():
                entry["test"][name] = test[r0:r0 + len(rows)]
                r0 += len(rows)
            per_task[task.name] = entry
        lo, hi = self.prompt_range(zoo)
        timings = {**self.saved_timings(), **self.timings}
        report = {"config": c.to_dict(), "device": str(self.device),
                  "tasks": {"seen": [x.name for x in self.seen], "held out": [x.name for x in self.held_out]},
                  "zoo": {"models": len(zoo), "val_range": [lo, hi], "val_median": float(zoo.val_accuracy.median()),
                          "test_median": float(zoo.accuracy.median())},
                  "prompted": task_calibration.calibrate(per_task, lo, hi), "per_task": per_task, "timings": timings,
                  "inputs": {"generator": gen_digest, "generated": generated_digest}}
        save_json(self.path("report"), report)
        save_text(self.path("table"), task_calibration.format_report(report))
        self._bookkeeping("report", config=False)
        task_calibration.plot_calibration(report, self.run_dir)
        return report

    def format_report(self, report: dict) -> str:
        """report.md's text, and the plot (TaskPDiff.report reads and checks report.json first)."""
        task_calibration.plot_calibration(report, self.run_dir)
        return task_calibration.format_report(report)
