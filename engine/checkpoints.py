"""Training checkpoints: safetensors weights, weights-only optimizer state, JSON trainer state, checksums.

A checkpoint is a folder ``step-XXXXXXXX`` written as a temporary folder and renamed into place, with
``checksums.json`` (sha256 of every file) beside the files. :func:`latest_valid` walks the checkpoints
newest first and returns the first whose checksums match, warning about each corrupted one it skips, so
a checkpoint cut in half makes training fall back to the previous good one. Nothing is unpickled:
weights load with safetensors, the optimizer with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model

log = logging.getLogger(__name__)
CHECKSUMS = "checksums.json"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save(root: str | Path, step: int, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None,
         state: dict[str, Any], keep: int = 3) -> Path:
    """Write checkpoint ``root/step-<step>`` atomically; keep the newest ``keep`` checkpoints."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:08d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-step-{step:08d}-", dir=root))
    try:
        save_model(model, str(tmp / "model.safetensors"))
        if optimizer is not None:
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save({"torch_rng": torch.get_rng_state()}, tmp / "rng.pt")
        (tmp / "state.json").write_text(json.dumps({**state, "step": step}, indent=2))
        sums = {p.name: _sha256(p) for p in sorted(tmp.iterdir())}
        (tmp / CHECKSUMS).write_text(json.dumps(sums, indent=2))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in list_checkpoints(root)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoint folders under ``root`` (searched recursively), oldest first by step."""
    root = Path(root)
    if not root.exists():
        return []
    found = [p.parent for p in root.rglob("state.json") if p.parent.name.startswith("step-") and
             not p.parent.name.startswith(".tmp")]
    return sorted(found, key=lambda p: (int(p.name.split("-")[1]), str(p)))


def verify(path: str | Path) -> str | None:
    """None if the checkpoint's files match their checksums, else what is wrong."""
    path = Path(path)
    sums_file = path / CHECKSUMS
    if not sums_file.exists():
        return "no checksums.json"
    try:
        sums = json.loads(sums_file.read_text())
    except json.JSONDecodeError:
        return "checksums.json is corrupted"
    for name, digest in sums.items():
        f = path / name
        if not f.exists():
            return f"{name} is missing"
        if _sha256(f) != digest:
            return f"{name} does not match its checksum (truncated or corrupted)"
    return None


def latest_valid(root: str | Path) -> Path | None:
    """The newest checkpoint that passes :func:`verify`; corrupted ones are skipped with a warning."""
    for ckpt in reversed(list_checkpoints(root)):
        problem = verify(ckpt)
        if problem is None:
            return ckpt
        log.warning("skipping checkpoint %s: %s; falling back to the previous one", ckpt, problem)
    return None


def load(path: str | Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None,
         map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Restore model (and optimizer) in place; return the trainer state (``step`` etc.)."""
    path = Path(path)
    try:
        missing, unexpected = load_model(model, str(path / "model.safetensors"), strict=False, device=str(map_location))
    except RuntimeError as err:  # shape mismatches
        raise ValueError(f"checkpoint {path} does not fit this model architecture: "
                         f"{str(err).splitlines()[1].strip() if len(str(err).splitlines()) > 1 else err}") from None
    if unexpected or [m for m in missing if "lm_head" not in m and "embed_tokens" not in m]:
        raise ValueError(f"checkpoint {path} does not fit this model architecture "
                         f"(missing {list(missing)[:3]}, unexpected {list(unexpected)[:3]})")
    if optimizer is not None and (path / "optimizer.pt").exists():
        optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location=map_location, weights_only=True))
    rng = torch.load(path / "rng.pt", weights_only=True)
    torch.set_rng_state(rng["torch_rng"])
    return json.loads((path / "state.json").read_text())
