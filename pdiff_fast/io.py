"""Artifacts on disk: safetensors for tensors, JSON for metadata, never pickle.

Every write goes to a temporary name in the same folder and is renamed into place, so an
interrupted run never leaves a half-written file where a good one was, and a symlink planted
at the target is replaced, never followed. Files get the usual permissions (0666 minus the
umask), not mkstemp's 0600.

Every tensor file carries a digest (sha256 of its tensors and metadata) in its header: the
artifacts made from it record that digest, so a step can tell that its inputs still belong
together (pdiff_fast.pipeline.run_dir), and every load recomputes it from the bytes it read, so a
damaged file (bit rot, a partial copy, an edit that kept the header) is refused, never used.
The header holds one metadata entry, so the same tensors and metadata give the same bytes
(safetensors writes several entries in a random order).

A write that fails (a full disk, no permission) raises OSError naming the file, whatever the
writer underneath raised; the old file, if any, is kept.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import stat
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

HEADER_KEY = "pdiff_fast.artifact"  # {"digest": ..., "meta": ...}: one entry, so its bytes are reproducible
META_KEY, DIGEST_KEY = "pdiff_fast", "pdiff_fast.digest"  # files written before HEADER_KEY (read only)
TMP_SUFFIX = ".tmp"
MAX_JSON_BYTES = 256 << 20  # a JSON file this package reads (config, report, timings) is far smaller


class DamagedFile(ValueError):
    """A tensor file whose contents no longer match the digest recorded when it was written."""

    def __init__(self, path: Path, recorded: str, found: str, remake: str | None = None):
        self.path, self.recorded, self.found = path, recorded, found
        again = f"; rerun `{remake}` to remake it" if remake else ""
        super().__init__(f"{path}: damaged: its contents do not match the digest written with them "
                         f"(recorded {recorded}, found {found}: bit rot, a partial copy or an edit){again}")


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


def _os_error(exc: Exception, path: Path) -> OSError:
    """An OSError naming `path` for a writer's failure (safetensors raises its own error on a full disk)."""
    if isinstance(exc, OSError):
        code, why = exc.errno, exc.strerror or str(exc)
    else:
        found = re.search(r"os error (\d+)", str(exc))
        code = int(found.group(1)) if found else errno.EIO
        why = os.strerror(code) if found else str(exc)
    return OSError(code, f"could not write it: {why}", str(path))


def _write_atomic(path: Path, write) -> Path:
    try:
        tmp = _atomic_target(path)
    except OSError as exc:
        raise _os_error(exc, path) from exc
    try:
        try:
            write(tmp)
            _commit(tmp, path)
        except (OSError, SafetensorError) as exc:
            raise _os_error(exc, path) from exc
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
            h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))  # hashed in place, not copied
    return h.hexdigest()[:32]


def save_tensors(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any] | None = None) -> str:
    """Write tensors (+ JSON-able metadata) to a .safetensors file atomically; returns its digest."""
    path = Path(path)
    clean = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    meta = json.loads(json.dumps(meta or {}, sort_keys=True))  # as it reads back: the digest a load recomputes
    digest = digest_tensors(clean, meta)
    header = {HEADER_KEY: json.dumps({"digest": digest, "meta": meta})}  # meta's keys are sorted above
    _write_atomic(path, lambda tmp: save_file(clean, tmp, metadata=header))
    return digest


def _header(path: Path) -> tuple[dict, str | None]:
    """(metadata, digest) from a tensor file's header (either layout)."""
    with safe_open(str(path), framework="pt") as f:
        header = f.metadata() or {}
    if HEADER_KEY in header:
        found = json.loads(header[HEADER_KEY])
        if not isinstance(found, dict) or not isinstance(found.get("meta", {}), dict):
            raise ValueError(f"its {HEADER_KEY} entry is not an object with a meta object")
        return found.get("meta", {}), found.get("digest")
    return json.loads(header.get(META_KEY, "{}")), header.get(DIGEST_KEY)


READ_ERRORS = (SafetensorError, OSError, json.JSONDecodeError, RuntimeError, UnicodeDecodeError, RecursionError,
               ValueError)


def load_artifact(path: str | os.PathLike, device: str | torch.device = "cpu",
                  verify: bool = True) -> tuple[dict[str, torch.Tensor], dict, str | None]:
    """(tensors, metadata, digest) of a file written by `save_tensors`; the digest is recomputed from
    what was read and must match the header's (verify=False skips that: a file still being judged).

    A missing file raises FileNotFoundError; a corrupt or truncated one ValueError; a damaged one
    (its data changed after it was written) DamagedFile, a ValueError."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        tensors = load_file(str(path), device="cpu")
        meta, digest = _header(path)
    except READ_ERRORS as exc:
        raise ValueError(f"{path}: corrupt or truncated safetensors file ({exc})") from exc
    if verify and digest is not None:
        found = digest_tensors(tensors, meta)
        if found != digest:
            raise DamagedFile(path, digest, found)
    if torch.device(device).type != "cpu":
        tensors = {k: v.to(device) for k, v in tensors.items()}
    return tensors, meta, digest


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
        return _header(path)
    except READ_ERRORS as exc:
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


def load_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    """The JSON value in `path`; every way it can be unreadable is a ValueError naming the file (a FIFO
    or a device, over MAX_JSON_BYTES, not UTF-8, not JSON, nested too deeply), but a directory, which
    no step can replace, is an IsADirectoryError (an OSError)."""
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(errno.EISDIR, f"is a directory, not a {what}", str(path))  # for the user to move
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"{path}: not a regular file (a FIFO, socket or device), not a {what}")
    if st.st_size > MAX_JSON_BYTES:
        raise ValueError(f"{path}: {st.st_size} bytes, more than a {what} can be ({MAX_JSON_BYTES} bytes)")
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text ({exc})") from exc
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc
    except RecursionError:
        raise ValueError(f"{path}: JSON nested too deeply to read") from None



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
