"""Pipeline stage bookkeeping: a stage that completed with the same inputs, config and code is skipped.

A stage's key hashes its config, what it consumes and the code version (the source of ``models/``,
``engine/``, ``tasks/`` and ``flows/``), so editing a later stage's config reruns only that stage and what
follows. A model it consumes enters the key by its content (:func:`tasks.tracking.model_identity`), never by
its ``models:/name/version`` string alone: version 1 in a fresh store, or a retrained version 1, is another
model. Records are small JSON files under ``<state>/stages``, written atomically; each names the tracking
store it was written against and the identity of every model it hands on, and :func:`reusable` hands a
record back only when that store is the current one and every run, model version and folder it names is
still there with the same content; otherwise it says why, and the stage runs again.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

from tasks.runtime.env import PROJECT_ROOT, state_dir


PACKAGES = ("models", "engine", "tasks", "flows")


def _module_file(name: str) -> Path | None:
    parts = name.split(".")
    if parts[0] not in PACKAGES:
        return None
    f = PROJECT_ROOT.joinpath(*parts).with_suffix(".py")
    if f.exists():
        return f
    f = PROJECT_ROOT.joinpath(*parts, "__init__.py")
    return f if f.exists() else None


def import_closure(root: str = "flows.pipeline") -> list[Path]:
    """The project's source files reachable from ``root`` through imports (including imports inside
    functions), found statically with ``ast``."""
    import ast

    seen: dict[str, Path] = {}
    todo = [root]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        f = _module_file(name)
        if f is None:
            continue
        seen[name] = f
        todo += [name.rsplit(".", i)[0] for i in range(1, name.count(".") + 1)]  # the packages above it run first
        for node in ast.walk(ast.parse(f.read_text(), filename=str(f))):
            if isinstance(node, ast.Import):
                todo += [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                todo.append(node.module)
                todo += [f"{node.module}.{a.name}" for a in node.names]
    return sorted(set(seen.values()))


def code_version(root: str = "flows.pipeline") -> str:
    """A hash of the code the pipeline can run (edits to unrelated flows do not invalidate its stages)."""
    h = hashlib.sha256()
    for p in import_closure(root):
        h.update(str(p.relative_to(PROJECT_ROOT)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def by_content(value: Any) -> Any:
    """``value`` with every model reference (``models:/``, ``runs:/`` or a model folder) replaced by its
    content identity; other values (corpus folders, which are named by their content, numbers) as they are."""
    from tasks import tracking

    if isinstance(value, dict):
        return {k: by_content(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [by_content(v) for v in value]
    if tracking.is_model_reference(value) or (isinstance(value, str) and _is_model_folder(value)):
        return tracking.model_identity(value)
    return value


def _is_model_folder(path: str) -> bool:
    """A ``save_pretrained`` folder (its config.json names a ``model_type``) or an MLflow model; not a corpus
    folder, whose config.json is the corpus prep config (corpora are named by their content already)."""
    p = Path(path)
    if not p.is_dir():
        return False
    if (p / "MLmodel").is_file():
        return True
    try:
        return "model_type" in json.loads((p / "config.json").read_text())
    except (OSError, ValueError, TypeError):
        return False


def stage_key(name: str, config: dict[str, Any], inputs: dict[str, Any]) -> str:
    """The stage's key: config, the content of the models it consumes (see module doc), and the code."""
    payload = json.dumps({"config": config, "inputs": by_content(inputs), "code": code_version()},
                         sort_keys=True, default=str)
    return f"{name}-{hashlib.sha256(payload.encode()).hexdigest()[:16]}"


def _path(key: str) -> Path:
    return Path(os.environ.get("SPACTOR_STAGE_DIR", state_dir() / "stages")) / f"{key}.json"


#: the record's bookkeeping keys (not outputs of the stage)
STORE_KEY, IDENTITY_KEY = "_tracking_store", "_model_identities"


def _walk(value: Any, key: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _walk(v, str(k) if not key.endswith("run_ids") else key)
    elif isinstance(value, list):
        for v in value:
            yield from _walk(v, key)
    else:
        yield key, value


def _model_refs(outputs: dict[str, Any]) -> list[str]:
    from tasks import tracking

    return sorted({v for _, v in _walk(outputs) if tracking.is_model_reference(v)})


def reusable(key: str) -> tuple[dict[str, Any] | None, str]:
    """``(outputs, "")`` when the stage completed earlier against the current tracking store and everything
    it hands on is still there and the same; else ``(None, why)`` (``why`` is empty when it never completed).

    Checked: the store the record was written against; every MLflow run it names (keys ending in ``run_id``
    and the values of ``run_ids``); every ``models:/`` version (there, and the same content as when recorded);
    every local folder (keys ending in ``_dir``)."""
    from tasks import tracking

    p = _path(key)
    if not p.exists():
        return None, ""
    try:
        rec = json.loads(p.read_text())
    except json.JSONDecodeError:
        return None, f"its record {p} is not readable JSON"
    outputs = {k: v for k, v in rec.items() if k not in (STORE_KEY, IDENTITY_KEY)}
    store = rec.get(STORE_KEY)
    if store is None:
        return None, "its record names no tracking store (written before stores were checked)"
    if store != tracking.tracking_uri():
        return None, f"it was recorded against the tracking store {store}, not the current {tracking.tracking_uri()}"
    for k, v in _walk(outputs):
        if isinstance(v, str) and v and (k.endswith("run_id") or k.endswith("run_ids")):
            if not tracking.run_exists(v):
                return None, f"its MLflow run {v} is not in the tracking store {store}"
        elif isinstance(v, str) and k.endswith("_dir") and "://" not in v and not Path(v).exists():
            return None, f"its folder {v} is gone"
    identities = rec.get(IDENTITY_KEY) or {}
    for ref in _model_refs(outputs):
        try:
            now = tracking.model_identity(ref)
        except FileNotFoundError:
            return None, f"the model {ref} it registered is no longer in the registry of {store}"
        if identities.get(ref) != now:
            return None, f"the model {ref} now holds other weights than the ones it registered"
    return outputs, ""


def record(key: str, outputs: dict[str, Any]) -> None:
    """Write the stage's outputs with the current tracking store and the identity of every model they name."""
    from tasks import tracking

    rec = {**outputs, STORE_KEY: tracking.tracking_uri(),
           IDENTITY_KEY: {ref: tracking.model_identity(ref) for ref in _model_refs(outputs)}}
    p = _path(key)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=".tmp-")
    with os.fdopen(fd, "w") as f:
        json.dump(rec, f, indent=2, default=str)
    os.replace(tmp, p)
