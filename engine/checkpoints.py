"""Training checkpoints: safetensors weights, weights-only optimizer state, JSON trainer state, checksums.

A checkpoint is a folder ``step-<step, 8 digits>`` written as a temporary folder and renamed into place, with
``checksums.json`` (sha256 of every file) beside the files. :func:`latest_valid` walks the checkpoints
newest first and returns the first whose checksums match, warning about each corrupted one it skips, so
a checkpoint cut in half makes training fall back to the previous good one. Nothing is unpickled:
weights load with safetensors, the optimizer with ``torch.load(weights_only=True)``.

Crash and concurrency hygiene (:func:`publish`, used for every step checkpoint and for ``final/``):
- each writer fills a private temporary folder ``.tmp-<what>-<host>-<pid>-*``, fsyncs every file and the
  folder, then renames it into place and fsyncs the parent, so a power cut leaves either the old state
  or the complete new one;
- a folder that is already in place and valid is never deleted: two writers of the same checkpoint (two
  runs of one config) both succeed, the second one discarding its identical copy;
- temporary folders left by a killed writer on this host (its pid is gone) are removed by the next
  writer; another live writer's folder is left alone;
- ``final/`` carries ``checksums.json`` over all its files (recursively), checked by :func:`verify`;
- old checkpoints are pruned by renaming them to a private temporary folder first, so a kill while pruning
  never leaves half a checkpoint in place;
- a full disk (or quota, or file-size limit) while writing raises :class:`StorageFullError`, one line that
  names the folder, after removing the half-written temporary folder; the checkpoints before it stay valid.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model

log = logging.getLogger(__name__)
CHECKSUMS = "checksums.json"
_NO_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


class StorageFullError(OSError):
    """No space (or quota, or file-size limit) left while writing a checkpoint; nothing half-written was kept."""


def _no_space(err: BaseException | None) -> str | None:
    """What says the disk is full, if ``err`` is or was caused by that: an OSError (torch.save raises a
    RuntimeError whose context is the OSError), or a library error that reports it as text (safetensors)."""
    for _ in range(8):
        if err is None:
            return None
        if isinstance(err, OSError) and err.errno in _NO_SPACE:
            return err.strerror or str(err)
        if any(m in str(err).lower() for m in ("no space left", "disk quota exceeded", "file too large")):
            return str(err).splitlines()[0]
        err = err.__cause__ or err.__context__
    return None


def _storage_full(err: BaseException, what: Path, root: Path) -> StorageFullError:
    good = latest_valid(root) if root.is_dir() else None
    return StorageFullError(errno.ENOSPC, f"no space left writing {what} ({_no_space(err)}); the "
                            f"half-written copy was removed" + (f" and {good.name} is intact" if good else "")
                            + ": free space, then rerun to resume")


def file_sha256(path: Path) -> str:
    """The sha256 hex digest of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def folder_checksums(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` by its relative path (the checksums file itself left out)."""
    return {p.relative_to(folder).as_posix(): file_sha256(p) for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != CHECKSUMS}


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(folder: Path) -> None:
    """fsync every file and folder under ``folder`` (bottom up), so a rename after it publishes durable data."""
    for p in sorted(folder.rglob("*"), key=lambda q: len(q.parts), reverse=True):
        _fsync(p)
    _fsync(folder)


def _tmp_prefix(what: str) -> str:
    return f".tmp-{what}-{socket.gethostname()}-{os.getpid()}-"


def private_tmp(root: str | Path, what: str) -> Path:
    """A fresh temporary folder under ``root`` that only this process writes (its name holds host and pid)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    clean_stale_tmp(root)
    return Path(tempfile.mkdtemp(prefix=_tmp_prefix(what), dir=root))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_tmp(root: str | Path, *, legacy_age_s: float = 3600.0) -> list[Path]:
    """Remove ``.tmp-*`` folders under ``root`` left by killed writers on this host; returns what was removed.

    A folder whose name carries this host and a pid that no longer runs is stale. One of another host is
    kept (its writer may be alive); one without host and pid (an older layout) is stale after
    ``legacy_age_s``."""
    import time

    root, host, removed = Path(root), socket.gethostname(), []
    if not root.is_dir():
        return removed
    for d in root.iterdir():
        if not (d.is_dir() and d.name.startswith(".tmp-")):
            continue
        stale = False
        marker = f"-{host}-"
        if marker in d.name:
            pid_text = d.name.split(marker, 1)[1].split("-", 1)[0]
            stale = pid_text.isdigit() and int(pid_text) != os.getpid() and not _pid_alive(int(pid_text))
        elif d.name.count("-") < 4:  # no host/pid in the name: the layout before this one
            try:
                stale = time.time() - d.stat().st_mtime > legacy_age_s
            except FileNotFoundError:
                continue
        if stale:
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
            log.info("removed %s, left by a writer that was killed", d)
    return removed


def publish(tmp: Path, final: Path) -> Path:
    """Write ``checksums.json`` into ``tmp``, make it durable and rename it to ``final``, atomically.

    If ``final`` already holds a valid folder (an earlier run, or a concurrent writer of the same config) it
    is kept and ``tmp`` is discarded; an invalid one is moved aside first, never deleted in place."""
    (tmp / CHECKSUMS).write_text(json.dumps(folder_checksums(tmp), indent=2))
    _fsync_tree(tmp)
    for _ in range(10):  # another writer may be publishing or pruning the same folder at this moment
        if final.exists():
            if verify(final) is None:
                shutil.rmtree(tmp, ignore_errors=True)
                return final
            aside = Path(tempfile.mkdtemp(prefix=_tmp_prefix("invalid"), dir=final.parent))
            try:
                os.replace(final, aside / final.name)
            except FileNotFoundError:
                pass  # another writer moved or removed it first
            shutil.rmtree(aside, ignore_errors=True)
        try:
            os.replace(tmp, final)
        except OSError:  # a concurrent writer put a folder there first (non-empty target): look again
            continue
        _fsync(final.parent)
        return final
    raise OSError(f"could not publish {final}: another writer kept replacing it")


def save(root: str | Path, step: int, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None,
         state: dict[str, Any], keep: int = 3) -> Path:
    """Write checkpoint ``root/step-<step>`` atomically (:func:`publish`); keep the newest ``keep``."""
    root = Path(root)
    tmp = private_tmp(root, f"step-{step:08d}")
    try:
        save_model(model, str(tmp / "model.safetensors"))
        if optimizer is not None:
            _torch_save(optimizer.state_dict(), tmp / "optimizer.pt")
        _torch_save({"torch_rng": torch.get_rng_state()}, tmp / "rng.pt")
        (tmp / "state.json").write_text(json.dumps({**state, "step": step}, indent=2))
        final = publish(tmp, root / f"step-{step:08d}")
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if _no_space(err):
            raise _storage_full(err, root / f"step-{step:08d}", root) from None
        raise
    for old in list_checkpoints(root)[:-keep] if keep > 0 else []:
        prune(old)
    return final


def _torch_save(obj: Any, path: Path) -> None:
    """torch.save through a Python file object, so a full disk surfaces as the OSError behind torch's error."""
    with open(path, "wb") as f:
        torch.save(obj, f)


def prune(checkpoint: Path) -> None:
    """Remove a checkpoint folder: renamed aside first (atomic), so a kill mid-delete leaves no half of it."""
    aside = Path(tempfile.mkdtemp(prefix=_tmp_prefix("pruned"), dir=checkpoint.parent))
    try:
        os.replace(checkpoint, aside / checkpoint.name)
    except FileNotFoundError:
        pass  # another writer pruned it first
    shutil.rmtree(aside, ignore_errors=True)


def save_final(checkpoint_dir: str | Path, write, state: dict[str, Any]) -> Path:
    """``checkpoint_dir/final``: ``write(folder)`` fills it (the objective's ``save_final``), then the trainer
    state and checksums are added and it is published atomically (:func:`publish`)."""
    root = Path(checkpoint_dir)
    tmp = private_tmp(root, "final")
    try:
        write(tmp)
        (tmp / "trainer_state.json").write_text(json.dumps(state, indent=2, default=str))
        return publish(tmp, root / "final")
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if _no_space(err):
            raise _storage_full(err, root / "final", root) from None
        raise


def list_checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoint folders under ``root`` (searched recursively), oldest first by step."""
    root = Path(root)
    for _ in range(5):  # another writer may remove a folder while we walk the tree
        if not root.exists():
            return []
        try:
            found = [p.parent for p in root.rglob("state.json") if p.parent.name.startswith("step-") and
                     not any(part.startswith(".tmp") for part in p.relative_to(root).parts)]
            break
        except FileNotFoundError:
            continue
    else:
        found = []
    return sorted(found, key=lambda p: (int(p.name.split("-")[1]), str(p)))


def verify(path: str | Path) -> str | None:
    """None if the checkpoint's files match their checksums, else what is wrong."""
    path = Path(path)
    sums_file = path / CHECKSUMS
    try:
        sums = json.loads(sums_file.read_text())
    except FileNotFoundError:
        return "no checksums.json"
    except json.JSONDecodeError:
        return "checksums.json is corrupted"
    for name, digest in sums.items():
        try:
            if file_sha256(path / name) != digest:
                return f"{name} does not match its checksum (truncated or corrupted)"
        except FileNotFoundError:  # missing, or removed while we read it (another writer pruning)
            return f"{name} is missing"
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
