"""What the steps of a task run share (TaskParts, the base of TaskPDiff): the run directory and
its provenance checks (as pdiff_fast.pipeline.run_dir's, for the artifacts zoo -> generator ->
generated), the task family and its seen / held-out split, the task network, support sets, the
zoo loaded back, and the batched accuracy of many models on one task."""
from __future__ import annotations

import time
from pathlib import Path

import torch

from ..config import read_config_file
from ..diffusion.sample import model_seed
from ..evaluation.population import evaluate_population, warm_allocator
from ..io import load_artifact, save_json, save_tensors
from ..nn.models import MLP
from ..params import ParamSpec
from ..pipeline.parts import pick_device
from ..pipeline.run_dir import StaleArtifact, after_save, prepare_run_dir, read_remade_by, read_timings
from .config import MADE_BY, STEP_FIELDS, TaskConfig
from .family import TaskFamily, digit_pair_tasks, fixed_support, split_tasks
from .zoo import Zoo


class TaskParts:
    PROMPTED = False  # a config with prompted=true needs pdiff_fast.prompted.PromptedTaskPDiff
    FILES = {"config": "config.json", "zoo": "zoo.safetensors", "generator": "generator.safetensors",
             "generated": "generated.safetensors", "report": "report.json", "table": "report.md",
             "timings": "timings.json"}

    def __init__(self, config: TaskConfig | None = None, run_dir: str | Path = "runs/tasks", progress: bool = True,
                 allow_stale: bool = False, log=print):
        self.config = (config or TaskConfig()).validate()
        if self.config.prompted != self.PROMPTED:
            raise ValueError(f"config prompted={str(self.config.prompted).lower()} needs "
                             f"{'pdiff_fast.prompted.PromptedTaskPDiff' if self.config.prompted else 'pdiff_fast.tasks.TaskPDiff'}"
                             f", not {type(self).__name__}")
        self.device = pick_device(self.config.device)
        self.run_dir = prepare_run_dir(Path(run_dir))
        self.progress, self.allow_stale = progress, allow_stale
        self.log = log or (lambda *a: None)
        self.family = TaskFamily(digit_pair_tasks())
        self.seen, self.held_out = split_tasks(self.family.tasks, self.config.held_out_pairs, self.config.split_seed)
        self.timings: dict[str, float] = {}
        self._base: torch.nn.Module | None = None
        if self.device.type == "cpu":
            warm_allocator()

    def path(self, what: str) -> Path:
        return self.run_dir / self.FILES[what]

    # --- provenance -----------------------------------------------------------------------
    def _fields(self, artifact: str) -> dict:
        cfg = self.config.to_dict()
        rec = {f: cfg[f] for f in STEP_FIELDS[artifact]}
        if artifact == "generator":
            rec["denoiser_channels"] = self.denoiser_channels()
        return rec

    def _save(self, artifact: str, tensors: dict, meta: dict, inputs: dict) -> str:
        digest = save_tensors(self.path(artifact), tensors, {**meta, "config": self._fields(artifact),
                                                             "inputs": inputs})
        self._bookkeeping(artifact)
        return digest

    def _load(self, artifact: str, inputs: dict[str, str | None]) -> tuple[dict, dict, str | None]:
        tensors, meta, digest = self._read(artifact, load_artifact)
        self._check(artifact, meta, inputs)
        return tensors, meta, digest

    def _read(self, artifact: str, read):
        """read(path) of an artifact that must exist; a damaged or unreadable file's error names the step that
        remakes it."""
        path = self._existing(artifact)
        return read_remade_by(lambda: read(path), f"pdiff-fast tasks {MADE_BY[artifact]}")

    def _existing(self, artifact: str) -> Path:
        path = self.path(artifact)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing; run `pdiff-fast tasks {MADE_BY[artifact]}` first")
        return path

    def _check(self, artifact: str, meta: dict, inputs: dict[str, str | None]) -> None:
        """The artifact was made with this config's fields for its step and from the inputs on disk now."""
        if self.allow_stale:
            return
        name = self.FILES[artifact]
        mine = self._fields(artifact)
        for f, v in meta.get("config", {}).items():
            if f in mine and mine[f] != v:
                raise StaleArtifact(f"{name} was made with {f}={v!r} but the config says {f}={mine[f]!r}: "
                                    f"rerun `pdiff-fast tasks {MADE_BY[artifact]}`, or leave {f} unchanged")
        for parent, digest_now in inputs.items():
            recorded = meta.get("inputs", {}).get(parent)
            if recorded is not None and digest_now is not None and recorded != digest_now:
                raise StaleArtifact(f"{name} is stale: it was made from another {self.FILES[parent]}; rerun "
                                    f"`pdiff-fast tasks {MADE_BY[artifact]}` (or pass --allow-stale)")

    def _timed(self, name: str, fn):
        """fn(), its time kept in self.timings (written by _bookkeeping, after the step's artifact)."""
        start = time.perf_counter()
        out = fn()
        self.timings[name] = time.perf_counter() - start
        return out

    def saved_timings(self) -> dict:
        return read_timings(self.path("timings"))

    def _bookkeeping(self, artifact: str, config: bool = True) -> None:
        """After `artifact` is saved: its fields into config.json and the timings into timings.json (after_save)."""
        after_save(self, self.FILES[artifact], (lambda: self._save_config(artifact)) if config else None)

    # --- pieces -------------------------------------------------------------------------
    def new_model(self, seed: int | None = None) -> torch.nn.Module:
        """The task network; seed None: the zoo's shared initialisation."""
        torch.manual_seed(self.config.seed if seed is None else seed)
        n_in = int(torch.Size(self.family.input_shape).numel())
        return MLP(n_in, self.family.num_classes, hidden=tuple(self.config.hidden)).to(self.device)

    def base_model(self) -> torch.nn.Module:
        """The network at the zoo's shared initialisation, built once (the evaluator and the trainers copy
        what they change)."""
        if self._base is None:
            with torch.random.fork_rng(devices=[]):  # building it leaves the global RNG as it was
                self._base = self.new_model()
        return self._base

    def spec(self) -> ParamSpec:
        return ParamSpec.from_model(self.base_model(), "all")

    def denoiser_channels(self) -> list[int]:
        if self.config.denoiser_channels is not None:
            return list(self.config.denoiser_channels)
        return [64, 128, 256, 512] if self.device.type == "cuda" else [16, 32, 64, 128]

    def stacked(self, tasks, split: str = "train"):
        return tuple(t.to(self.device) for t in self.family.stacked(tasks, split))

    def task_seeds(self, tasks) -> list[int]:
        """Each task's support-set seed: a function of the run's seed and the task's place in the family."""
        return [model_seed(self.config.seed, self.family.tasks.index(t)) for t in tasks]

    def support_sets(self, tasks) -> torch.Tensor:
        x, y, counts = self.stacked(tasks)
        return fixed_support(x, y, counts, self.config.support, self.task_seeds(tasks), self.family.num_classes)
    def _save_config(self, artifact: str) -> None:
        try:
            on_disk = read_config_file(self.path("config")) if self.path("config").exists() else {}
        except ValueError:  # a damaged config.json is rewritten from this run's config
            on_disk = {}
        cfg = self.config.to_dict()
        save_json(self.path("config"), {**cfg, **on_disk, **{f: cfg[f] for f in STEP_FIELDS[artifact]}})

    def load_zoo(self) -> tuple[Zoo, str | None]:
        zoo, digest = self._read("zoo", Zoo.load_with_digest)
        self._check("zoo", zoo.meta, {})
        if zoo.tasks != [t.name for t in self.seen]:
            raise StaleArtifact(f"{self.FILES['zoo']} holds other tasks than this config's seen tasks; rerun "
                                "`pdiff-fast tasks zoo`")
        return zoo, digest

    def accuracy(self, task, flat: torch.Tensor) -> torch.Tensor:
        """(n,) test accuracy (percent) of the rows of flat on `task`, by the batched population evaluator."""
        return self.scored(self.family.data(task), flat)

    def scored(self, d, flat: torch.Tensor) -> torch.Tensor:
        """(n,) accuracy (percent) of the rows of flat on d's test split."""
        res = evaluate_population(self.base_model(), self.spec(), flat.to(self.device), d.x_test.to(self.device),
                                  d.y_test.to(self.device), memory_budget_bytes=self.config.memory_budget_mb << 20,
                                  keep_predictions=False)
        return res.accuracy.cpu()
