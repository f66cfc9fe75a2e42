"""`pdiff-fast tasks`: dataset-conditioned generation (D2NWG) end to end, in one run directory.

    p = TaskPDiff(TaskConfig(), "runs/tasks")
    p.zoo()        # one MLP per run per seen task, all trained at once (pdiff_fast.zoo) -> zoo.safetensors
    p.train()      # parameter autoencoder + task-conditioned latent diffusion -> generator.safetensors
    p.sample()     # models for every task, seen and held out, in one batch -> generated.safetensors
    p.evaluate()   # no-training accuracy against the baselines, fine-tuning curves -> report.json / .md, plots

The task family is pdiff_fast.tasks (the 90 ordered digit pairs; whole pairs held out). The
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
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import denoiser as dn_lib
from . import task_report
from .conditional import MODES, ConditionedDenoiser, fit_conditional, generate_conditioned
from .config import ConfigFields, _channels, _choice, _device, _int, _num, _type, read_config_file
from .diffusion import make_scheduler
from .io import load_artifact, load_json, read_digest, save_json, save_tensors, save_text
from .lowrank_autoencoder import LowRankAutoencoder
from .models import MLP
from .params import ParamSpec, Standardizer
from .pipeline import pick_device
from .population import evaluate_population, warm_allocator
from .run_dir import StaleArtifact, prepare_run_dir
from .sample import model_seed
from .set_encoder import SetEncoder
from .tasks import TaskFamily, digit_pair_tasks, fixed_support, split_tasks, support, task_by_name
from .train import fit_autoencoder
from .zoo import Zoo, train_models, train_one


@dataclass
class TaskConfig(ConfigFields):
    # tasks and the network
    held_out_pairs: int = 9  # of the 45 digit pairs, held out in both orders (18 of the 90 tasks)
    split_seed: int = 0
    hidden: list = field(default_factory=lambda: [32])  # the MLP's hidden widths (D = 2,210 with [32])
    # the zoo
    zoo_runs: int = 10  # models per seen task (their batch orders differ; their start is shared)
    zoo_steps: int = 200  # SGD steps per model (batch 32: about 22 epochs of a task's ~290 samples)
    zoo_lr: float = 0.05
    batch_size: int = 32
    # parameter autoencoder (pdiff_fast.lowrank_autoencoder: principal-component start, then trained)
    standardize: bool = True
    rank: int = 32
    ae_steps: int = 1000
    ae_lr: float = 1e-3
    input_noise: float = 0.001
    latent_noise: float = 0.1
    # conditioned latent diffusion
    denoiser_channels: list | None = None  # None: [64,128,256,512] on a GPU, [16,32,64,128] on a CPU
    conditioning: str = "blocks"  # how the task embedding enters the denoiser (pdiff_fast.conditional); "blocks"
    # beat "time" on held-out and seen tasks (benchmarks/results/tasks_conditioning_cpu.md)
    encoder_width: int = 64
    embed_dim: int = 32
    support: int = 64  # (x, y) samples per support set
    cond_drop: float = 0.1  # share of training rows given the null embedding (classifier-free guidance)
    diffusion_steps: int = 3000  # "blocks" fits the seen tasks as well as at 6000 (tasks_conditioning_cpu.md)
    diffusion_lr: float = 1e-3
    diffusion_batch_size: int = 256
    ema_decay: float = 0.995
    # sampling
    guidance: float = 4.0  # 0: unconditional, 1: conditional, > 1: guided; 4 fit the seen tasks best of 1, 2, 4
    sampler: str = "ddpm"
    sample_steps: int = 50  # DDIM steps
    samples_per_task: int = 10
    # evaluation
    finetune_models: int = 5  # per start and held-out task
    finetune_steps: int = 100
    finetune_lr: float = 0.05
    memory_budget_mb: int = 1024
    device: str = "auto"
    seed: int = 0

    @classmethod
    def problems(cls, d: dict, source: str) -> list[str]:
        return _problems(d, source)


def _widths(v):
    if not isinstance(v, list) or not v or not all(isinstance(w, int) and not isinstance(w, bool) and w > 0
                                                   for w in v):
        return f"expected a non-empty list of positive widths, got {v!r}"
    return None


CHECKS = {
    "held_out_pairs": _int(1, 44), "split_seed": _int(0), "hidden": _widths, "zoo_runs": _int(1),
    "zoo_steps": _int(1), "zoo_lr": _num(0, lo_open=True), "batch_size": _int(1),
    "standardize": _type(bool, "true or false"), "rank": _int(1), "ae_steps": _int(1),
    "ae_lr": _num(0, lo_open=True), "input_noise": _num(0, 1), "latent_noise": _num(0, 1),
    "denoiser_channels": _channels, "conditioning": _choice(*MODES), "encoder_width": _int(4),
    "embed_dim": _int(1), "support": _int(1),
    "cond_drop": _num(0, 1, hi_open=True), "diffusion_steps": _int(1), "diffusion_lr": _num(0, lo_open=True),
    "diffusion_batch_size": _int(1), "ema_decay": _num(0, 1, hi_open=True), "guidance": _num(0),
    "sampler": _choice("ddpm", "ddim"), "sample_steps": _int(1, 1000), "samples_per_task": _int(1),
    "finetune_models": _int(1), "finetune_steps": _int(1), "finetune_lr": _num(0, lo_open=True),
    "memory_budget_mb": _int(1), "device": _device, "seed": _int(0, 2**62),
}


def _problems(d: dict, source: str) -> list[str]:
    out = []
    for name, value in d.items():
        problem = CHECKS[name](value) if name in CHECKS else None
        if problem:
            out.append(f"{source}: field {name!r}: {problem}")
    if isinstance(d.get("encoder_width"), int) and d["encoder_width"] % 4:
        out.append(f"{source}: field 'encoder_width': must be a multiple of 4 (the set encoder's attention heads)")
    return out


# The config fields each artifact depends on, and the command that makes it.
STEP_FIELDS = {
    "zoo": ("held_out_pairs", "split_seed", "hidden", "zoo_runs", "zoo_steps", "zoo_lr", "batch_size", "seed"),
    "generator": ("standardize", "rank", "ae_steps", "ae_lr", "input_noise", "latent_noise", "denoiser_channels",
                  "conditioning", "encoder_width", "embed_dim", "support", "cond_drop", "diffusion_steps",
                  "diffusion_lr", "diffusion_batch_size", "ema_decay", "seed"),
    "generated": ("guidance", "sampler", "sample_steps", "samples_per_task", "seed"),
}
MADE_BY = {"zoo": "zoo", "generator": "train", "generated": "sample"}
RANDOM_INIT_SEED = 10_000  # random-initialisation baselines: seeds RANDOM_INIT_SEED + j, apart from the zoo's
FINETUNE_RECORD = (0, 1, 2, 3, 4, 6, 8, 11, 16, 23, 32, 45, 64, 91, 128, 181, 256, 362, 512)
CHECKPOINT = "generator.ckpt.safetensors"
CHECKPOINT_EVERY = 500  # diffusion steps between resumable checkpoints
LOOP_ROWS = 16  # zoo rows also trained one at a time, to measure the loop's speed against the batched zoo
GUIDANCE_SWEEP = (0.0, 1.0, 2.0, 4.0)  # classifier-free guidance scales measured on the held-out tasks


class TaskPDiff:
    FILES = {"config": "config.json", "zoo": "zoo.safetensors", "generator": "generator.safetensors",
             "generated": "generated.safetensors", "report": "report.json", "table": "report.md",
             "timings": "timings.json"}

    def __init__(self, config: TaskConfig | None = None, run_dir: str | Path = "runs/tasks", progress: bool = True,
                 allow_stale: bool = False, log=print):
        self.config = (config or TaskConfig()).validate()
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
        self._save_config(artifact)
        return digest

    def _load(self, artifact: str, inputs: dict[str, str | None]) -> tuple[dict, dict, str | None]:
        tensors, meta, digest = load_artifact(self._existing(artifact))
        self._check(artifact, meta, inputs)
        return tensors, meta, digest

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
        start = time.perf_counter()
        out = fn()
        self.timings[name] = time.perf_counter() - start
        old = load_json(self.path("timings")) if self.path("timings").is_file() else {}
        save_json(self.path("timings"), {**old, **self.timings})
        return out

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

    # --- steps --------------------------------------------------------------------------
    def zoo(self) -> Zoo:
        """Train zoo_runs models for every seen task from the shared start, all at once."""
        c = self.config
        model, spec = self.base_model(), self.spec()
        init = spec.flatten([model])[0]
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
        zoo = Zoo(params.cpu(), task, run, accuracy, init.cpu(), spec, [t.name for t in self.seen],
                  {"family": "digit-pairs", "held_out": [t.name for t in self.held_out],
                   "models_per_second": len(task) / self.timings["zoo_train"],
                   "loop_models_per_second": loop_rate, "loop_max_abs_difference": loop_gap})
        zoo.meta["config"], zoo.meta["inputs"] = self._fields("zoo"), {}
        zoo.save(self.path("zoo"))
        self._save_config("zoo")
        self.log(f"zoo: {len(task)} models in {self.timings['zoo_train']:.1f} s "
                 f"({zoo.meta['models_per_second']:.1f} models/s; a loop of one model at a time: {loop_rate:.1f} "
                 f"models/s); test accuracy median {accuracy.median():.2f}")
        return zoo

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

    def _save_config(self, artifact: str) -> None:
        on_disk = read_config_file(self.path("config")) if self.path("config").is_file() else {}
        cfg = self.config.to_dict()
        save_json(self.path("config"), {**cfg, **on_disk, **{f: cfg[f] for f in STEP_FIELDS[artifact]}})

    def load_zoo(self) -> tuple[Zoo, str | None]:
        path = self._existing("zoo")
        zoo = Zoo.load(path)
        self._check("zoo", zoo.meta, {})
        digest = read_digest(path)
        if zoo.tasks != [t.name for t in self.seen]:
            raise StaleArtifact(f"{self.FILES['zoo']} holds other tasks than this config's seen tasks; rerun "
                                "`pdiff-fast tasks zoo`")
        return zoo, digest

    def accuracy(self, task, flat: torch.Tensor) -> torch.Tensor:
        """(n,) test accuracy (percent) of the rows of flat on `task`, by the batched population evaluator."""
        d = self.family.data(task)
        res = evaluate_population(self.base_model(), self.spec(), flat.to(self.device), d.x_test.to(self.device),
                                  d.y_test.to(self.device), memory_budget_bytes=self.config.memory_budget_mb << 20,
                                  keep_predictions=False)
        return res.accuracy.cpu()

    def _build_generator(self, zoo: Zoo):
        c = self.config
        ae = LowRankAutoencoder(zoo.spec.dim, c.rank, c.input_noise, c.latent_noise).to(self.device)
        features = int(torch.Size(self.family.input_shape).numel()) + self.family.num_classes
        net = ConditionedDenoiser(dn_lib.AE_CNN_bottleneck(c.rank, 1, channel_list=self.denoiser_channels()),
                                  SetEncoder(features, c.encoder_width, c.embed_dim), c.conditioning)
        return ae, dn_lib.EMA(net, c.ema_decay).to(self.device)

    def train(self, restart: bool = False) -> None:
        """The parameter autoencoder on the zoo, then the conditioned denoiser and set encoder on its latents.
        Resumable: every CHECKPOINT_EVERY steps of the diffusion phase the whole state (the autoencoder too)
        goes to generator.ckpt.safetensors; a later `train` with the same zoo and settings continues from it
        (restart=True: from scratch). The checkpoint is removed once the generator is saved."""
        c = self.config
        zoo, zoo_digest = self.load_zoo()
        std = Standardizer.fit(zoo.spec, zoo.params) if c.standardize else None
        x = (std.transform(zoo.params) if std else zoo.params).to(self.device)
        torch.manual_seed(c.seed)
        ae, model = self._build_generator(zoo)
        resume = None if restart else self._checkpoint(zoo_digest)
        if resume is None:
            self._timed("train_autoencoder", lambda: fit_autoencoder(ae, x, c.ae_steps, c.ae_lr, seed=c.seed,
                                                                     progress=self.progress))
        else:
            tensors, meta = resume
            ae.load_state_dict({k[3:]: v.to(self.device) for k, v in tensors.items() if k.startswith("ae.")})
            resume = ({k: v for k, v in tensors.items() if not k.startswith("ae.")}, meta)
            self.log(f"resuming the conditioned generator's training at step {meta['step']}")
        with torch.no_grad():
            latents = ae.encode(x)
        sx, sy, counts = self.stacked(self.seen)  # seen tasks only: the zoo's

        def draw_sets(rows, gen):
            return support(sx, sy, counts, rows, c.support, gen, self.family.num_classes)

        def checkpoint(tensors, meta):
            ae_state = {f"ae.{k}": v for k, v in ae.state_dict().items()}
            save_tensors(self.run_dir / CHECKPOINT, {**tensors, **ae_state},
                         {**meta, "config": self._fields("generator"), "inputs": {"zoo": zoo_digest},
                          "device": self.device.type})

        losses = self._timed("train_diffusion", lambda: fit_conditional(
            model, latents, zoo.task.to(self.device), draw_sets, make_scheduler("ddpm"), c.diffusion_steps,
            c.diffusion_lr, batch_size=c.diffusion_batch_size, drop=c.cond_drop, seed=c.seed,
            progress=self.progress, checkpoint=checkpoint, checkpoint_every=CHECKPOINT_EVERY, resume=resume))
        tensors = {f"ae.{k}": v for k, v in ae.state_dict().items()}
        tensors.update({f"denoiser.{k}": v for k, v in model.state_dict().items()})
        if std is not None:
            tensors.update({f"std.{k}": v for k, v in std.state_dict().items()})
        self._save("generator", tensors, {"diffusion_losses": losses}, {"zoo": zoo_digest})
        (self.run_dir / CHECKPOINT).unlink(missing_ok=True)
        self.log(f"trained the conditioned generator -> {self.path('generator')}")

    def _checkpoint(self, zoo_digest: str | None):
        """The diffusion checkpoint's (tensors, meta) when it was made from this zoo with these settings."""
        path = self.run_dir / CHECKPOINT
        if not path.is_file():
            return None
        try:
            tensors, meta, _ = load_artifact(path)
        except ValueError as exc:
            self.log(f"ignoring an unreadable checkpoint ({exc})")
            return None
        if meta.get("config") != self._fields("generator") or meta.get("inputs") != {"zoo": zoo_digest} \
                or meta.get("device") != self.device.type:
            self.log(f"{CHECKPOINT} was made from another zoo or with other settings; training from the start")
            return None
        return tensors, meta

    def load_generator(self):
        zoo, zoo_digest = self.load_zoo()
        tensors, meta, digest = self._load("generator", {"zoo": zoo_digest})
        ae, model = self._build_generator(zoo)
        part = lambda p: {k[len(p):]: v.to(self.device) for k, v in tensors.items() if k.startswith(p)}  # noqa: E731
        ae.load_state_dict(part("ae."))
        model.load_state_dict(part("denoiser."))
        std = Standardizer.from_state_dict(zoo.spec, part("std.")) if self.config.standardize else None
        ae.eval(), model.eval()
        return zoo, ae, model.ema, std, digest

    def embed(self, model: ConditionedDenoiser, tasks) -> torch.Tensor:
        with torch.no_grad():
            return model.embed(self.support_sets(tasks))

    def generate(self, tasks, n: int | None = None, guidance: float | None = None, loaded=None) -> torch.Tensor:
        """n models per task (default samples_per_task), all tasks in one batch: (len(tasks) * n, D), task-major."""
        c = self.config
        n = n or c.samples_per_task
        _, ae, model, std, _ = loaded or self.load_generator()
        emb = self.embed(model, tasks).repeat_interleave(n, 0)
        flat = generate_conditioned(ae, model, make_scheduler(c.sampler, c.sample_steps),
                                    emb, c.guidance if guidance is None else guidance, seed=c.seed,
                                    device=self.device, memory_budget_bytes=c.memory_budget_mb << 20,
                                    progress=self.progress)
        return std.inverse(flat) if std is not None else flat

    def sample(self) -> dict[str, torch.Tensor]:
        """samples_per_task models for every task (seen and held out) at the config's guidance, and as many
        from the same generator without conditioning (guidance 0)."""
        c = self.config
        loaded = self.load_generator()
        tasks = self.seen + self.held_out
        flat = self._timed("sample", lambda: self.generate(tasks, loaded=loaded))
        uncond = self.generate(tasks[:1], guidance=0.0, loaded=loaded)  # the null condition ignores the task
        index = torch.tensor([self.family.tasks.index(t) for t in tasks]).repeat_interleave(c.samples_per_task)
        out = {"params": flat.cpu(), "task": index, "unconditional": uncond.cpu()}
        self._save("generated", out, {"tasks": self.family.names}, {"generator": loaded[-1]})
        self.log(f"generated {len(flat)} models ({c.samples_per_task} for each of {len(tasks)} tasks) in "
                 f"{self.timings['sample']:.1f} s -> {self.path('generated')}")
        return out

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
        t, _, _ = self._load("generated", {"generator": gen_digest})
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
        timings = {**(load_json(self.path("timings")) if self.path("timings").is_file() else {}),
                   **self.timings}
        report = {"config": c.to_dict(), "device": str(self.device),
                  "tasks": {"seen": [x.name for x in self.seen], "held out": [x.name for x in self.held_out]},
                  "zoo": {"models": len(zoo.params), "models_per_second": zoo.meta.get("models_per_second"),
                          "loop_models_per_second": zoo.meta.get("loop_models_per_second"),
                          "median_accuracy": float(zoo.accuracy.median())},
                  "zero_shot": zero_shot, "guidance_sweep": sweep, "finetune": finetune, "finetune_record": record,
                  "finetune_curves": curves, "finetune_steps": c.finetune_steps, "finetune_lr": c.finetune_lr,
                  "batch_size": c.batch_size, "targets": task_report.targets(zero_shot, finetune),
                  "per_task": per_task, "timings": timings}
        save_json(self.path("report"), report)
        save_text(self.path("table"), task_report.format_report(report))
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

    def report(self) -> str:
        path = self.path("report")
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing; run `pdiff-fast tasks evaluate` first")
        from .io import load_json

        report = load_json(path)
        task_report.plot_report(report, self.run_dir)
        return task_report.format_report(report)

    def run(self) -> dict:
        self.zoo()
        self.train()
        self.sample()
        return self.evaluate()


def _cycle(rows: torch.Tensor, n: int) -> torch.Tensor:
    """n rows: rows repeated in order when there are fewer than n."""
    return rows[torch.arange(n) % len(rows)]


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
