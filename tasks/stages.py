"""Pipeline stage bookkeeping: a stage that completed with the same inputs, config and code is skipped.

A stage's key hashes its config, the references it consumes (paths, model URIs) and the code version
(the source of ``models/``, ``engine/``, ``tasks/`` and ``flows/``), so editing a later stage's config reruns only that
stage and what follows. Records are small JSON files under ``<state>/stages``, written atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from tasks.env import PROJECT_ROOT, state_dir


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


def stage_key(name: str, config: dict[str, Any], inputs: dict[str, Any]) -> str:
    payload = json.dumps({"config": config, "inputs": inputs, "code": code_version()}, sort_keys=True, default=str)
    return f"{name}-{hashlib.sha256(payload.encode()).hexdigest()[:16]}"


def _path(key: str) -> Path:
    return Path(os.environ.get("SPACTOR_STAGE_DIR", state_dir() / "stages")) / f"{key}.json"


def completed(key: str) -> dict[str, Any] | None:
    p = _path(key)
    if not p.exists():
        return None
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError:
        return None


def record(key: str, outputs: dict[str, Any]) -> None:
    p = _path(key)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=".tmp-")
    with os.fdopen(fd, "w") as f:
        json.dump(outputs, f, indent=2, default=str)
    os.replace(tmp, p)
