"""The dependency rules of the layout: models/ is pure; only tasks/tracking.py imports mlflow."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module.split(".")[0])
    return out


def test_models_never_import_prefect_mlflow_or_ray():
    bad = {str(p.relative_to(ROOT)): sorted(_imports(p) & {"prefect", "mlflow", "ray", "tasks", "flows"})
           for p in (ROOT / "models").rglob("*.py")}
    assert {k: v for k, v in bad.items() if v} == {}


def test_only_the_tracking_module_imports_mlflow():
    users = sorted(str(p.relative_to(ROOT)) for d in ("tasks", "flows", "models")
                   for p in (ROOT / d).rglob("*.py") if "mlflow" in _imports(p))
    assert users == ["tasks/tracking.py"]


def test_dependencies_point_from_flows_to_tasks_to_models():
    back = {str(p.relative_to(ROOT)) for p in (ROOT / "tasks").rglob("*.py") if "flows" in _imports(p)}
    assert back == set(), back
