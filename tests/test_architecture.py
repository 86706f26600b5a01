"""The dependency rules of the layout: flows -> tasks -> engine -> models; models/ is pure maths, engine/ has
neither Prefect nor MLflow, only tasks/tracking.py imports mlflow."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ("models", "engine", "tasks", "flows")  # each may import only the ones before it, with no exceptions


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "import_module" and node.args:
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                out.add(arg.value.split(".")[0])
    return out


def _files(*dirs: str):
    return [p for d in dirs for p in (ROOT / d).rglob("*.py")]


def test_models_never_import_prefect_mlflow_ray_pandas_or_a_higher_layer():
    forbidden = {"prefect", "mlflow", "ray", "pandas", "engine", "tasks", "flows"}
    bad = {str(p.relative_to(ROOT)): sorted(_imports(p) & forbidden) for p in _files("models")}
    assert {k: v for k, v in bad.items() if v} == {}


def test_the_engine_has_neither_prefect_nor_mlflow_and_never_imports_tasks_or_flows():
    bad = {str(p.relative_to(ROOT)): sorted(_imports(p) & {"prefect", "mlflow", "tasks", "flows"})
           for p in _files("engine")}
    assert {k: v for k, v in bad.items() if v} == {}


def test_only_the_tracking_module_imports_mlflow():
    """Besides tasks/tracking.py, only the models-from-code files MLflow itself runs to load a registered model
    (tasks/mlflow_models/); they import nothing of the project, since MLflow copies them into the model."""
    users = sorted(str(p.relative_to(ROOT)) for p in _files("tasks", "flows", "models", "engine", "benchmarks")
                   if "mlflow" in _imports(p))
    code_files = sorted(str(p.relative_to(ROOT)) for p in _files("tasks/mlflow_models"))
    assert code_files and users == sorted(["tasks/tracking.py", *code_files])
    project = {"models", "engine", "tasks", "flows", "benchmarks", "infra", "tests"}
    assert {f: sorted(_imports(ROOT / f) & project) for f in code_files} == {f: [] for f in code_files}


def test_dependencies_point_from_flows_to_tasks_to_engine_to_models():
    back = {}
    for i, layer in enumerate(LAYERS):
        higher = set(LAYERS[i + 1:])
        for p in _files(layer):
            wrong = _imports(p) & higher
            if wrong:
                back[str(p.relative_to(ROOT))] = sorted(wrong)
    assert back == {}


def test_benchmarks_never_import_flows():
    """Benchmarks take their typed configs from engine.config, not from the flows above it."""
    bad = {str(p.relative_to(ROOT)): sorted(_imports(p) & {"flows"}) for p in _files("benchmarks")}
    assert {k: v for k, v in bad.items() if v} == {}


def test_only_the_config_modules_of_the_engine_import_pydantic():
    """The bare GPU machine (benchmarks/device_check.sh) has no pydantic: the engine's training step, objectives
    and decoding run without it, and only the config room (engine/config/) needs it."""
    users = sorted(str(p.relative_to(ROOT)) for p in _files("engine", "models") if "pydantic" in _imports(p))
    assert users and all(u.startswith("engine/config/") for u in users), users


def _module_name(p: Path) -> str:
    parts = list(p.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _project_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports (at module level or inside functions), packages resolved to
    the deepest module that exists."""
    mods = {_module_name(p): p for p in _files(*LAYERS)}

    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for name, path in mods.items():
        out = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                out.update(resolve(a.name) for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                out.update(resolve(f"{node.module}.{a.name}") for a in node.names)
        graph[name] = out - {None, name}
    return graph


def test_the_project_import_graph_has_no_cycle():
    graph, done, path = _project_graph(), set(), []

    def visit(m: str) -> list[str] | None:
        if m in path:
            return path[path.index(m):] + [m]
        if m in done:
            return None
        path.append(m)
        for n in sorted(graph.get(m, ())):
            cycle = visit(n)
            if cycle:
                return cycle
        path.pop()
        done.add(m)
        return None

    cycles = [c for c in (visit(m) for m in sorted(graph)) if c]
    assert cycles == []


def test_no_private_name_is_imported_from_another_module_and_nothing_is_re_exported():
    """One home per name: no ``from x import _private`` across modules, no ``noqa: F401`` re-export."""
    private, reexports = [], []
    for p in _files(*LAYERS, "benchmarks"):
        text = p.read_text()
        if "noqa: F401" in text:
            reexports.append(str(p.relative_to(ROOT)))
        for node in ast.walk(ast.parse(text, filename=str(p))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in LAYERS:
                private += [f"{p.relative_to(ROOT)}: {node.module}.{a.name}" for a in node.names
                            if a.name.startswith("_")]
    assert (private, reexports) == ([], [])
