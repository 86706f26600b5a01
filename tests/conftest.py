"""Test session setup: all state in a temporary folder, the embedded defaults, a real Prefect test API."""

import os
import sys
import tempfile
from pathlib import Path

_STATE = Path(tempfile.mkdtemp(prefix="spactor-test-state-"))
os.environ["SPACTOR_STATE_DIR"] = str(_STATE)
for var in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL", "RAY_ADDRESS"):
    os.environ.pop(var, None)  # tests always use the embedded services
os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tasks.env import apply_embedded_defaults  # noqa: E402

apply_embedded_defaults()

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def state_dir() -> Path:
    return _STATE


@pytest.fixture(scope="session")
def prefect_harness():
    """A real temporary Prefect API for the whole session (started once, ~10 s)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield


@pytest.fixture()
def text_files(tmp_path: Path) -> Path:
    """A folder of small English text files (from Python's own documentation prose)."""
    import pydoc_data.topics as topics

    folder = tmp_path / "texts"
    folder.mkdir()
    for i, (name, body) in enumerate(sorted(topics.topics.items())[:60]):
        (folder / f"{i:03d}-{name}.txt").write_text(body, encoding="utf-8")
    return folder
