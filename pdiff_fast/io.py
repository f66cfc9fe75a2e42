"""Artifacts on disk: safetensors for tensors, JSON for metadata, never pickle.

Every write goes to a temporary name in the same folder and is renamed into place, so an
interrupted run never leaves a half-written file where a good one was, and a symlink planted
at the target is replaced, never followed. Files get the usual permissions (0666 minus the
umask), not mkstemp's 0600.

Every tensor file carries a digest (sha256 of its tensors and metadata) in its header: the
artifacts made from it record that digest, so a step can tell that its inputs still belong
together (see pipeline.py).
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

META_KEY = "pdiff_fast"
DIGEST_KEY = "pdiff_fast.digest"
TMP_SUFFIX = ".tmp"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _atomic_target(path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    os.close(fd)
    return tmp


def _commit(tmp: str, path: Path) -> None:
    os.chmod(tmp, 0o666 & ~_umask())  # after writing: some writers recreate the file
    os.replace(tmp, path)  # atomic; replaces a symlink at `path` instead of writing through it


def _write_atomic(path: Path, write) -> Path:
    tmp = _atomic_target(path)
    try:
        write(tmp)
        _commit(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def save_figure(fig, path: Path) -> Path:
    """A matplotlib figure as a PNG, written atomically (as every artifact)."""
    _write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png"))
    return path


def digest_tensors(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any] | None = None) -> str:
    """sha256 over the names, dtypes, shapes and bytes of the tensors, and the metadata."""
    h = hashlib.sha256(json.dumps(meta or {}, sort_keys=True).encode())
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:32]


def save_tensors(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any] | None = None) -> str:
    """Write tensors (+ JSON-able metadata) to a .safetensors file atomically; returns its digest."""
    path = Path(path)
    clean = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    digest = digest_tensors(clean, meta)
    header = {META_KEY: json.dumps(meta or {}), DIGEST_KEY: digest}
    _write_atomic(path, lambda tmp: save_file(clean, tmp, metadata=header))
    return digest


def _header(path: Path) -> dict:
    with safe_open(str(path), framework="pt") as f:
        return f.metadata() or {}


def load_artifact(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[dict[str, torch.Tensor], dict, str | None]:
    """(tensors, metadata, digest) of a file written by `save_tensors`.

    A missing file raises FileNotFoundError; a corrupt or truncated one ValueError."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        tensors = load_file(str(path), device=str(device))
        header = _header(path)
        meta = json.loads(header.get(META_KEY, "{}"))
    except (SafetensorError, OSError, json.JSONDecodeError, RuntimeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: corrupt or truncated safetensors file ({exc})") from exc
    return tensors, meta, header.get(DIGEST_KEY)


def load_checkpoint(path: str | os.PathLike, log) -> tuple[dict[str, torch.Tensor], dict] | None:
    """A training checkpoint's (tensors, meta), or None after one log line when it cannot be read
    (a checkpoint is only a shortcut: training starts again instead)."""
    try:
        tensors, meta, _ = load_artifact(path)
    except ValueError as exc:
        log(f"ignoring an unreadable checkpoint ({exc})")
        return None
    return tensors, meta


def load_tensors(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[dict[str, torch.Tensor], dict]:
    """Read a file written by `save_tensors`; a missing, corrupt or truncated file raises an error naming it."""
    tensors, meta, _ = load_artifact(path, device)
    return tensors, meta


def read_meta(path: str | os.PathLike) -> tuple[dict, str | None] | None:
    """(metadata, digest) from a tensor file's header alone, or None if the file is missing."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        header = _header(path)
        return json.loads(header.get(META_KEY, "{}")), header.get(DIGEST_KEY)
    except (SafetensorError, OSError, RuntimeError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: corrupt or truncated safetensors file ({exc})") from exc


def read_digest(path: str | os.PathLike) -> str | None:
    """The digest in a tensor file's header (reads the header only), or None if the file is missing."""
    found = read_meta(path)
    return None if found is None else found[1]


def save_json(path: str | os.PathLike, obj: Any) -> Path:
    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2, sort_keys=True)
            f.write("\n")

    return _write_atomic(Path(path), write)


def save_text(path: str | os.PathLike, text: str) -> Path:
    return _write_atomic(Path(path), lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def load_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path}: is a directory, not a JSON file")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text ({exc})") from exc
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc


def clean_stale_temporaries(folder: str | os.PathLike, older_than_s: float = 60.0) -> list[Path]:
    """Remove temporaries (`.NAME.*.tmp`) that an interrupted write left in `folder`.

    Only files older than `older_than_s` go, so a write in progress in another process survives."""
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    now = time.time()
    for p in folder.iterdir():
        if p.name.startswith(".") and p.name.endswith(TMP_SUFFIX) and p.is_file() and not p.is_symlink():
            try:
                if now - p.stat().st_mtime >= older_than_s:
                    p.unlink()
                    removed.append(p)
            except OSError:
                pass
    return removed
