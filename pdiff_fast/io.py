"""Artifacts on disk: safetensors for tensors, JSON for metadata, never pickle.

Every write goes to a temporary name in the same folder and is renamed into place, so an
interrupted run never leaves a half-written file where a good one was.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

META_KEY = "pdiff_fast"


def _atomic_target(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    return tmp


def save_tensors(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any] | None = None) -> Path:
    """Write tensors (+ JSON-able metadata) to a .safetensors file atomically."""
    path = Path(path)
    tmp = _atomic_target(path)
    try:
        clean = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        save_file(clean, tmp, metadata={META_KEY: json.dumps(meta or {})})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def load_tensors(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[dict[str, torch.Tensor], dict]:
    """Read a file written by `save_tensors`; a missing, corrupt or truncated file raises ValueError."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        tensors = load_file(str(path), device=str(device))
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get(META_KEY, "{}"))
    except (SafetensorError, OSError, json.JSONDecodeError, RuntimeError) as exc:
        raise ValueError(f"{path}: corrupt or truncated safetensors file ({exc})") from exc
    return tensors, meta


def save_json(path: str | os.PathLike, obj: Any) -> Path:
    path = Path(path)
    tmp = _atomic_target(path)
    try:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=True)
            f.write("\n")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def load_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc
