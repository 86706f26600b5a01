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
