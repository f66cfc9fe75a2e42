"""The run directory: where every artifact of a run lands, and why its files can be trusted.

What a run directory guarantees:
- Provenance. Each artifact records the config fields its step used (`config` in its metadata)
  and the digests of the artifacts it was made from (`inputs`). A step checks that the files it
  reads belong together and were made with the settings it is given, and refuses otherwise,
  naming the stale file and the step to rerun (`allow_stale=True` / `--allow-stale` overrides).
- Integrity. Every tensor file is checked against its digest when it is read (pdiff_fast.io);
  a damaged one is refused, naming the step that remakes it.
- config.json describes what is on disk: `collect` writes it, `train` and `sample` update their
  own fields after their artifacts are saved; `evaluate` and `report` never change it. This
  bookkeeping (config.json, timings.json) comes after the artifact is saved: if it fails, the
  step warns and the artifact stays.
- Checkpoints. Training saves resumable state (`autoencoder.ckpt.safetensors`,
  `diffusion.ckpt.safetensors`) every `checkpoint_every` steps; `fit()` resumes from a
  checkpoint made from the same inputs and settings, to the same result as an uninterrupted
  run (bitwise on CPU), unless `restart=True`. The autoencoder is saved as soon as it is
  trained; if the diffusion checkpoint was made from it, it is kept and only diffusion resumes.
- Many processes (torchrun): rank 0 alone cleans and writes the directory; the others wait for
  it at a barrier (pdiff_fast.distributed).
"""
from __future__ import annotations

import os
import time
from pathlib import Path

from .. import distributed
from ..config import ConfigError, read_config_file
from ..io import (DamagedFile, clean_stale_temporaries, load_artifact, load_checkpoint, load_json, read_meta,
                 save_json, save_tensors)

# The config fields each artifact depends on (besides the seed, which every step takes).
STEP_FIELDS = {
    "population": ("dataset", "model", "model_kwargs", "subset", "recipe", "epochs", "k", "trajectories", "lr",
                   "subset_lr", "batch_size", "val_fraction", "span_noise"),
    "autoencoder": ("standardize", "autoencoder", "input_noise", "latent_noise", "ae_steps", "ae_lr",
                    "ae_weight_decay"),
    "diffusion": ("denoiser", "denoiser_channels", "shared_timestep", "diffusion_steps", "diffusion_lr",
                  "diffusion_weight_decay", "diffusion_batch_size", "ema_decay", "prompted", "cond_drop"),
    "generated": ("sampler", "sample_steps", "eta", "num_samples", "sample_grain", "prompt_accuracy", "guidance"),
}
MADE_BY = {"population": "collect", "autoencoder": "train", "diffusion": "train", "generated": "sample",
           "report": "evaluate"}
STEP_COUNT = {"autoencoder": "ae_steps", "diffusion": "diffusion_steps"}  # may grow on resume


class StaleArtifact(ValueError):
    """Files in the run directory that do not belong together."""


def read_remade_by(read, remake: str):
    """read(); a damaged, corrupt or foreign file's error (a ValueError) also names the command that remakes it."""
    try:
        return read()
    except StaleArtifact:
        raise
    except DamagedFile as exc:
        raise DamagedFile(exc.path, exc.recorded, exc.found, remake=remake) from None
    except ValueError as exc:
        raise ValueError(f"{' '.join(str(exc).split())}; rerun `{remake}` to remake it") from None


def read_timings(path: Path) -> dict:
    """timings.json as a dict; {} when missing or unreadable (timings are bookkeeping, never a reason to stop,
    and a damaged file is replaced; a directory there fails the save instead)."""
    try:
        old = load_json(path) if path.exists() else {}
    except (ValueError, OSError):
        return {}
    return old if isinstance(old, dict) else {}


def after_save(run, name: str, update_config) -> None:
    """The bookkeeping after artifact `name` is saved: update_config() (unless None), then run.timings merged
    into timings.json. A failure here (a full disk, a damaged file) warns and keeps the saved artifact.
    `run`: a RunDirectory or TaskParts."""
    try:
        if update_config is not None:
            update_config()
        save_json(run.path("timings"), {**read_timings(run.path("timings")), **run.timings})
    except (OSError, ValueError) as exc:
        run.log(f"warning: {name} is saved, but config.json / timings.json could not be updated "
                f"({' '.join(str(exc).split())})")


def check_report_inputs(run, report: dict, evaluate: str) -> None:
    """The tensor files a report was made from (its `inputs`) are read whole, their digests recomputed (a
    damaged one is refused), and must be the files it was made from (unless run.allow_stale); a file
    that is gone is skipped (the report is all that is left of it). `run`: a RunDirectory or TaskParts."""
    path = run.path("report")
    inputs = report.get("inputs", {})
    if not isinstance(inputs, dict):
        raise ValueError(f"{path}: not a report of this package (its inputs are not an object); rerun `{evaluate}`")
    for name, recorded in inputs.items():
        if name not in run.FILES or name == "report" or not run.path(name).is_file():
            continue
        now = run._read(name, load_artifact)[2]
        if recorded != now and not run.allow_stale:
            raise StaleArtifact(f"{path.name} is stale: {run.path(name).name} changed since it was evaluated; "
                                f"rerun `{evaluate}` (or pass --allow-stale)")


def prepare_run_dir(run_dir: Path) -> Path:
    """Make the run directory (or check the one there) and clear temporaries a killed write left
    (rank 0 only: another rank's clean-up could remove a file rank 0 is writing)."""
    if run_dir.exists() and not run_dir.is_dir():
        raise NotADirectoryError(f"{run_dir}: the run directory is a file, not a directory")
    if distributed.is_main():
        run_dir.mkdir(parents=True, exist_ok=True)
        if not os.access(run_dir, os.W_OK | os.X_OK):
            raise PermissionError(f"{run_dir}: the run directory is not writable")
        clean_stale_temporaries(run_dir)
    distributed.barrier()
    return run_dir


class RunDirectory:
    """The provenance, checkpoint and file-writing half of PDiff (which sets config, run_dir,
    device, allow_stale, log and timings, and defines denoiser_channels() and autoencoder_preset())."""
    FILES = {
        "config": "config.json", "population": "population.safetensors", "autoencoder": "autoencoder.safetensors",
        "diffusion": "diffusion.safetensors", "generated": "generated.safetensors", "report": "report.json",
        "table": "report.md", "timings": "timings.json",
        "autoencoder_ckpt": "autoencoder.ckpt.safetensors", "diffusion_ckpt": "diffusion.ckpt.safetensors",
    }

    def path(self, what: str) -> Path:
        return self.run_dir / self.FILES[what]

    # --- provenance -----------------------------------------------------------------------
    def _fields(self, artifact: str, **actual) -> dict:
        cfg = {**self.config.to_dict(), **actual}
        rec = {f: cfg[f] for f in STEP_FIELDS[artifact]}
        if artifact == "diffusion":
            rec["denoiser_channels"] = self.denoiser_channels()  # the resolved widths
        if artifact == "autoencoder":
            rec["autoencoder"] = self.autoencoder_preset()  # `auto` resolved at this run's D
        rec["seed"] = cfg["seed"]
        return rec

    def _record(self, artifact: str, inputs: dict[str, str], **actual) -> dict:
        return {"config": self._fields(artifact, **actual), "inputs": inputs}

    def _check_settings(self, artifact: str, meta: dict) -> None:
        """The artifact was made with the settings of this config (seed aside: a new seed is a new draw)."""
        recorded = meta.get("config")
        if recorded is None or self.allow_stale:
            return
        mine = self._fields(artifact)
        for f in STEP_FIELDS[artifact]:
            if f in recorded and recorded[f] != mine[f]:
                raise StaleArtifact(
                    f"{self.path(artifact).name} was made with {f}={recorded[f]!r} but the config says {f}={mine[f]!r}: "
                    f"rerun `pdiff-fast {MADE_BY[artifact]}` to apply it, or leave {f} unchanged")

    def _check_inputs(self, artifact: str, meta: dict, digests: dict[str, str | None]) -> None:
        """Every input recorded by `artifact` that this step also reads is the file on disk now."""
        if self.allow_stale:
            return
        for parent, recorded in meta.get("inputs", {}).items():
            if parent in digests and digests[parent] is not None and recorded != digests[parent]:
                raise StaleArtifact(
                    f"{self.path(artifact).name} is stale: it was made from another {self.path(parent).name} than the "
                    f"one in {self.run_dir}; rerun `pdiff-fast {MADE_BY[artifact]}` (or pass --allow-stale)")

    def _load(self, artifact: str, digests: dict[str, str | None]) -> tuple[dict, dict, str | None]:
        tensors, meta, digest = self._read(artifact, load_artifact)
        self._check_inputs(artifact, meta, digests)
        return tensors, meta, digest

    def _read(self, artifact: str, read):
        """read(path) of an artifact; a damaged or unreadable file's error names the step that remakes it."""
        return read_remade_by(lambda: read(self.path(artifact)), f"pdiff-fast {MADE_BY[artifact]}")

    def _save(self, artifact: str, tensors: dict, meta: dict, inputs: dict[str, str], **actual) -> str:
        return save_tensors(self.path(artifact), tensors, {**meta, **self._record(artifact, inputs, **actual)})

    def _update_config_json(self, artifact: str) -> None:
        """config.json follows what is on disk: after a step saved `artifact`, its fields go in."""
        path = self.path("config")
        if artifact == "population" or not path.is_file():
            save_json(path, self.config.to_dict())
            return
        try:
            on_disk = read_config_file(path)
        except ConfigError:
            on_disk = {}
        cfg = self.config.to_dict()
        on_disk.update({f: cfg[f] for f in STEP_FIELDS[artifact]})
        save_json(path, {**cfg, **on_disk})

    def _timed(self, name, fn):
        """fn(), its time kept in self.timings (written to timings.json by _bookkeeping, after the artifact)."""
        start = time.perf_counter()
        out = fn()
        self.timings[name] = time.perf_counter() - start
        return out

    def _bookkeeping(self, artifact: str, config: bool = True) -> None:
        """After `artifact` is saved: its fields into config.json (config=True) and this run's timings into
        timings.json (a failure warns and keeps the artifact: after_save)."""
        after_save(self, self.path(artifact).name, (lambda: self._update_config_json(artifact)) if config else None)

    def _checkpoint_state(self, artifact: str, inputs: dict, restart: bool):
        """A compatible checkpoint's (tensors, meta), or None (and why, in the log)."""
        path = self.path(f"{artifact}_ckpt")
        if restart or not path.is_file():
            return None
        try:
            meta, _ = read_meta(path)  # the header decides; the tensors are read only to resume
        except ValueError as exc:
            self.log(f"ignoring an unreadable checkpoint ({exc})")
            return None
        mine = self._fields(artifact)
        rec = meta.get("config", {})
        steps = STEP_COUNT[artifact]
        same = {k: v for k, v in rec.items() if k != steps} == {k: v for k, v in mine.items() if k != steps}
        if not same or meta.get("inputs") != inputs or meta.get("device") != self.device.type \
                or meta.get("step", 0) > mine[steps]:
            self.log(f"{path.name} was made from other inputs or settings; training {artifact} from the start")
            return None
        state = load_checkpoint(path, self.log)
        if state is not None:
            self.log(f"resuming {artifact} training from step {state[1]['step']} ({path.name})")
        return state

    def _checkpointer(self, artifact: str, inputs: dict):
        """The training loops' checkpoint callback: saves on rank 0, does nothing on the others
        (it is still called, so every rank reads the loss at the same steps)."""
        def save(tensors, meta):
            if not distributed.is_main():
                return
            save_tensors(self.path(f"{artifact}_ckpt"), tensors,
                         {**meta, **self._record(artifact, inputs), "device": self.device.type})
        return save

    def _autoencoder_is_current(self, pop_digest) -> bool:
        """The autoencoder on disk was trained from this population with these settings, and the
        diffusion checkpoint was made from it (an interrupted `train`)."""
        try:
            ae, ckpt = read_meta(self.path("autoencoder")), read_meta(self.path("diffusion_ckpt"))
        except ValueError:
            return False
        if ae is None or ckpt is None:
            return False
        (ae_meta, ae_digest), (ck_meta, _) = ae, ckpt
        return (ae_meta.get("inputs", {}).get("population") == pop_digest
                and ae_meta.get("config") == self._fields("autoencoder")
                and ck_meta.get("inputs", {}).get("autoencoder") == ae_digest)
