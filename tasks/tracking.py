"""The only module that talks to MLflow.

Everything else passes run ids, artifact paths and plain dicts through these functions. Experiments are
always created with an explicit artifact location (see ../shared/STACK.md: otherwise artifacts land in
``./mlruns`` of whatever folder the process ran in). Models are stored as ``save_pretrained`` folders
(safetensors + JSON, no pickle) and registered with ``create_model_version`` pointing at the run's
artifact folder, with a sha256 of the folder in the version's tags that :func:`resolve_model` verifies.
A T5 folder is registered as an MLflow pyfunc model built from code (``tasks/mlflow_models/t5_generator.py``,
the weights kept as its ``t5`` artifact), so ``mlflow.pyfunc.load_model`` and ``mlflow models serve`` work on
every registered T5 version; :func:`resolve_model` still hands the pipeline the plain ``save_pretrained`` folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Iterator, Mapping

import mlflow
from mlflow import MlflowClient
from mlflow.entities import RunStatus

from tasks.runtime.env import state_dir

log = logging.getLogger(__name__)

FLOW_RUN_TAG = "prefect.flow_run_id"
SHA_TAG = "sha256"
#: the sha256 of the weights folder itself (the ``save_pretrained`` files, without the pyfunc wrapping, whose
#: MLmodel carries a creation time): equal for two versions of the same weights, in any store
CONTENT_TAG = "content_sha256"


class TrackingUnavailable(ConnectionError):
    """The MLflow tracking server cannot be reached."""


def log_stream():
    """The stream MLflow's loggers write to (it forwards to ``sys.stderr``), for callers that reroute logs."""
    from mlflow.utils.logging_utils import MLFLOW_LOGGING_STREAM

    return MLFLOW_LOGGING_STREAM


def tracking_uri() -> str:
    return mlflow.get_tracking_uri()


def check_reachable(timeout_s: float = 5.0) -> None:
    """Fail fast, naming the URI, when an HTTP tracking server does not answer (no hang, no traceback wall)."""
    uri = tracking_uri()
    if not uri.startswith(("http://", "https://")):
        return
    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:  # noqa: S310 - user-configured URI
            if resp.status != 200:
                raise TrackingUnavailable(f"MLflow tracking server at {uri} answered {resp.status} on /health")
    except (OSError, socket.timeout) as err:
        raise TrackingUnavailable(
            f"MLflow tracking server at {uri} is unreachable ({err.__class__.__name__}: {err}); "
            "start it (make servers-up) or unset MLFLOW_TRACKING_URI to use the local SQLite store"
        ) from None


#: MLflow 3's UI opens an experiment on its GenAI overview (traces, sessions) unless the experiment says it
#: is a machine-learning one; this tag value ("Machine learning" in the UI) makes it open on the runs table.
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")


def ensure_experiment(name: str) -> str:
    """Get or create an experiment, tagged as a training experiment (:data:`EXPERIMENT_KIND`); local stores get
    an explicit artifact root under the state folder, or ``SPACTOR_ARTIFACT_ROOT`` (a folder, or
    ``s3://bucket/prefix`` for any store: MLflow then writes and reads the artifacts there through boto3).
    An existing experiment keeps the artifact location it was created with."""
    client = MlflowClient()
    exp = client.get_experiment_by_name(name)
    if exp is None:
        artifact_location = None
        root = os.environ.get("SPACTOR_ARTIFACT_ROOT")
        if root and root.startswith("s3://"):  # artifacts on object storage (any tracking store)
            artifact_location = f"{root.rstrip('/')}/{name}"
        elif not tracking_uri().startswith(("http://", "https://", "databricks")):
            artifact_location = (Path(root or state_dir() / "mlartifacts") / name).resolve().as_uri()
        try:
            exp_id = client.create_experiment(name, artifact_location=artifact_location,
                                              tags=dict([EXPERIMENT_KIND]))
        except mlflow.exceptions.MlflowException:  # created concurrently by another run
            exp_id = client.get_experiment_by_name(name).experiment_id
        return exp_id
    if exp.tags.get(EXPERIMENT_KIND[0]) is None:  # made before this tag was set
        _retry(client.set_experiment_tag, exp.experiment_id, *EXPERIMENT_KIND, what="tag the experiment kind")
    return exp.experiment_id


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _retry(fn, *args, attempts: int = 3, what: str = "mlflow call", **kwargs):
    delay = 0.5
    for i in range(attempts):
        try:
            return fn(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - tracking must never kill training
            if i == attempts - 1:
                log.warning("could not %s after %d attempts: %s", what, attempts, err)
                return None
            time.sleep(delay)
            delay *= 2


@contextlib.contextmanager
def start_run(
    experiment: str,
    run_name: str,
    *,
    params: Mapping[str, Any] | None = None,
    tags: Mapping[str, str] | None = None,
    parent_run_id: str | None = None,
) -> Iterator[str]:
    """Open a run (nested under ``parent_run_id`` if given); yield its id.

    A nested run goes into its parent's experiment, whatever ``experiment`` says (:func:`experiment_for`):
    MLflow's UI draws a run tree only inside one experiment, so a pipeline run and its stage runs form one
    tree there, while a stage flow run alone keeps its own experiment.
    An exception marks the run FAILED with the error in the ``error`` tag, then propagates.
    """
    check_reachable()
    exp_id = ensure_experiment(experiment_for(experiment, parent_run_id))
    client = MlflowClient()
    all_tags = {k: str(v) for k, v in (tags or {}).items()}  # REST stores need string tag values
    flow_run_id = _prefect_flow_run_id()
    if flow_run_id:
        all_tags.setdefault(FLOW_RUN_TAG, flow_run_id)
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    all_tags["mlflow.runName"] = run_name
    run = client.create_run(exp_id, run_name=run_name, tags=all_tags)
    run_id = run.info.run_id
    if params:
        log_params(run_id, params)
    try:
        yield run_id
    except BaseException as err:
        msg = f"{err.__class__.__name__}: {err}"[:4000]
        _retry(client.set_tag, run_id, "error", msg, what="tag the failed run")
        status = "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED"
        _retry(client.set_terminated, run_id, status, what="mark the run failed")
        raise
    else:
        client.set_terminated(run_id, "FINISHED")


def experiment_for(experiment: str, parent_run_id: str | None) -> str:
    """The experiment a run goes into: its parent's when it is nested, else ``experiment``."""
    if not parent_run_id:
        return experiment
    client = MlflowClient()
    return client.get_experiment(client.get_run(parent_run_id).info.experiment_id).name


def _prefect_flow_run_id() -> str | None:
    try:
        from prefect.runtime import flow_run

        rid = flow_run.get_id()
        return str(rid) if rid else None
    except Exception:  # noqa: BLE001 - not inside a flow
        return None


def log_params(run_id: str, params: Mapping[str, Any]) -> None:
    flat = {k: (json.dumps(v) if isinstance(v, (list, tuple)) else v) for k, v in _flatten(params).items()}
    client = MlflowClient()
    from mlflow.entities import Param

    batch = [Param(k, str(v)[:6000]) for k, v in flat.items()]
    for i in range(0, len(batch), 100):
        _retry(client.log_batch, run_id, params=batch[i : i + 100], what="log params")


def metric_name(key: str) -> str:
    """``key`` as MLflow accepts it: characters other than alphanumerics, ``_ - . : /`` and space become ``_`` (a
    draft labelled ``a+b`` would otherwise make MLflow refuse the whole batch)."""
    return re.sub(r"[^\w\-. :/]", "_", key)


def log_metrics(run_id: str, metrics: Mapping[str, float], step: int | None = None) -> bool:
    """Log numeric metrics with retries; returns False (and warns) if they could not be logged."""
    from mlflow.entities import Metric

    ts = int(time.time() * 1000)
    batch = [Metric(metric_name(k), float(v), ts, step or 0) for k, v in _flatten(metrics).items() if v is not None]
    if not batch:
        return True

    def send() -> bool:  # MlflowClient.log_batch returns None when it succeeds (synchronous logging)
        MlflowClient().log_batch(run_id, metrics=batch)
        return True

    return _retry(send, what=f"log metrics at step {step}") is True


class MetricsSink:
    """The training loop's metrics sink for one MLflow run: ``sink(metrics, step)`` hands them to a background
    thread that logs them, so an MLflow outage never stalls a training step. Picklable (it travels to the Ray
    workers inside their config; the thread starts on first use there).

    The queue holds ``max_pending`` batches. A batch that MLflow refuses after the retries of
    :func:`log_metrics`, or that does not fit in the queue, is appended to :attr:`unlogged_path` (JSON
    lines) with a warning naming the file, so nothing is lost. :meth:`close` (the loop calls it at the end)
    waits up to ``flush_s`` seconds for what is queued."""

    def __init__(self, run_id: str, *, max_pending: int = 1000, flush_s: float = 60.0):
        self.run_id, self.max_pending, self.flush_s = run_id, max_pending, flush_s
        self._q = self._thread = None
        self.dropped = 0  # batches that did not fit in the queue
        self.kept = 0  # batches written to unlogged_path (did not fit, or MLflow refused them)

    def __getstate__(self):
        return {"run_id": self.run_id, "max_pending": self.max_pending, "flush_s": self.flush_s}

    def __setstate__(self, state):
        self.__init__(state["run_id"], max_pending=state["max_pending"], flush_s=state["flush_s"])

    def __eq__(self, other):
        return isinstance(other, MetricsSink) and self.__getstate__() == other.__getstate__()

    def __hash__(self):
        return hash(self.run_id)

    def __repr__(self):
        return f"MetricsSink({self.run_id!r})"

    @property
    def unlogged_path(self) -> Path:
        """Where batches that MLflow did not take are kept (JSON lines: step, metrics), nothing is lost."""
        return state_dir() / "unlogged-metrics" / f"{self.run_id}.jsonl"

    def _keep(self, metrics: Mapping[str, float], step: int) -> None:
        path = self.unlogged_path
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"step": step, "metrics": {k: float(v) for k, v in _flatten(metrics).items()}}) + "\n")
        self.kept += 1
        if self.kept % 100 == 1:
            log.warning("MLflow did not take %d metric batches of run %s; they are kept in %s",
                        self.kept, self.run_id, path)

    def _drain(self) -> None:
        while True:
            item = self._q.get()
            try:
                if item is None:
                    return
                if not log_metrics(self.run_id, item[0], step=item[1]):
                    self._keep(*item)
            finally:
                self._q.task_done()

    def __call__(self, metrics: Mapping[str, float], step: int) -> None:
        import queue
        import threading

        if self._thread is None:
            self._q = queue.Queue(maxsize=self.max_pending)
            self._thread = threading.Thread(target=self._drain, name=f"mlflow-metrics-{self.run_id[:8]}", daemon=True)
            self._thread.start()
        try:
            self._q.put_nowait((dict(metrics), step))
        except queue.Full:  # MLflow is far behind: keep the batch on disk instead of waiting for it
            self.dropped += 1
            self._keep(metrics, step)

    def close(self) -> None:
        """Log what is still queued (waiting at most ``flush_s`` seconds), then stop the thread."""
        if self._thread is None:
            return
        deadline = time.monotonic() + self.flush_s
        while self._q.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.05)
        if self._q.unfinished_tasks:
            log.warning("gave up waiting for MLflow: %d metric batches of run %s not logged", self._q.unfinished_tasks,
                        self.run_id)
        try:
            self._q.put_nowait(None)
        except Exception:  # noqa: BLE001 - full: the daemon thread dies with the process
            pass
        self._thread = None


def set_tags(run_id: str, tags: Mapping[str, Any]) -> None:
    client = MlflowClient()
    for k, v in tags.items():
        _retry(client.set_tag, run_id, k, str(v), what=f"set tag {k}")


def log_artifacts(run_id: str, local_dir: str | Path, artifact_path: str | None = None) -> None:
    MlflowClient().log_artifacts(run_id, str(local_dir), artifact_path)


def log_artifact(run_id: str, local_file: str | Path, artifact_path: str | None = None) -> None:
    MlflowClient().log_artifact(run_id, str(local_file), artifact_path)


def log_dict(run_id: str, data: Any, artifact_file: str) -> None:
    MlflowClient().log_dict(run_id, data, artifact_file)


def log_text(run_id: str, text: str, artifact_file: str) -> None:
    MlflowClient().log_text(run_id, text, artifact_file)


def log_figure(run_id: str, figure: Any, artifact_file: str) -> None:
    MlflowClient().log_figure(run_id, figure, artifact_file)


def log_table(run_id: str, df: Any, artifact_file: str) -> None:
    """Log a pandas DataFrame as CSV (or Parquet, by the file's suffix)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(artifact_file).name
        if path.suffix == ".parquet":
            df.to_parquet(path)
        else:
            df.to_csv(path, index=False)
        sub = str(Path(artifact_file).parent)
        MlflowClient().log_artifact(run_id, str(path), None if sub == "." else sub)


def log_dataset_input(run_id: str, df: Any, *, name: str, source: str, context: str) -> None:
    """Record a dataset (a pandas sample + its source path) as an MLflow dataset input of the run."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "source can be interpreted in multiple ways": it is a local path
        ds = mlflow.data.from_pandas(df, source=source, name=name)
    from mlflow.entities import DatasetInput, InputTag

    _retry(
        MlflowClient().log_inputs,
        run_id,
        [DatasetInput(ds._to_mlflow_entity(), tags=[InputTag("mlflow.data.context", context)])],
        what="log dataset input",
    )


def artifact_uri(run_id: str, path: str = "") -> str:
    base = MlflowClient().get_run(run_id).info.artifact_uri
    return f"{base}/{path}" if path else base


def run_url(run_id: str) -> str | None:
    """The run's page in the MLflow UI when a tracking server is used (http/https), else None."""
    uri = tracking_uri()
    if not uri.startswith(("http://", "https://")):
        return None
    return run_page_url(uri, MlflowClient().get_run(run_id).info.experiment_id, run_id)


def run_page_url(server: str, experiment_id: str, run_id: str) -> str:
    """The MLflow UI's page of a run, opened in its "Model training" view. MLflow 3.17's UI keeps the GenAI /
    Model training switch in the browser alone (default GenAI, whatever the experiment's kind tag says: MLflow
    issue 24498), where a training run's logged models show as "Agent versions" and the model registry has no
    link; ``workflowType=machine_learning`` in the link sets the switch."""
    return f"{server.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}?workflowType=machine_learning"


def artifact_local_path(run_id: str, path: str = "") -> str:
    """Where a run's artifacts are, as a local path when the store is local, else the URI."""
    uri = artifact_uri(run_id, path)
    parsed = urllib.parse.urlparse(uri)
    return urllib.parse.unquote(parsed.path) if parsed.scheme in ("", "file") else uri


#: files MLflow itself writes into a model folder when it loads a version (not part of the model's content)
_LOAD_BOOKKEEPING = {"registered_model_meta"}


def folder_sha256(folder: str | Path) -> str:
    """A content hash of a folder (relative names + bytes, sorted): tags artifacts, checked on load.

    ``registered_model_meta``, which ``mlflow.pyfunc.load_model`` writes into a local source folder, is left out.
    """
    h = hashlib.sha256()
    root = Path(folder)
    for p in sorted(x for x in root.rglob("*") if x.is_file() and x.name not in _LOAD_BOOKKEEPING):
        h.update(str(p.relative_to(root)).encode())
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


#: the models-from-code file MLflow runs to load a registered T5 version (imports nothing of the project)
T5_MODEL_CODE = Path(__file__).resolve().parent / "mlflow_models" / "t5_generator.py"
#: the name of the ``save_pretrained`` folder inside a T5 pyfunc model (``artifacts/<folder>``)
T5_ARTIFACT = "t5"


def is_text_generator_folder(folder: str | Path) -> bool:
    """A ``save_pretrained`` folder of a model the pyfunc wrapper serves: a T5 (``model_type: t5``) or a
    decoder-only LM (an architecture ``...ForCausalLM``)."""
    cfg = Path(folder) / "config.json"
    try:
        config = json.loads(cfg.read_text()) if cfg.is_file() else {}
    except (OSError, ValueError):
        return False
    return config.get("model_type") == "t5" or any(str(a).endswith("ForCausalLM")
                                                   for a in config.get("architectures") or [])


def _pip_requirements() -> list[str]:
    """What a serving environment needs to load a T5 pyfunc version: the versions running here (no local tag)."""
    from importlib.metadata import version

    return [f"{pkg}=={version(pkg).split('+')[0]}" for pkg in ("mlflow", "torch", "transformers", "pandas")]


def save_t5_pyfunc(hf_dir: str | Path, dst: str | Path, *, input_example: list[str] | None = None,
                   max_new_tokens: int = 32) -> Path:
    """Write an MLflow pyfunc model (models-from-code) at ``dst`` around a T5 ``save_pretrained`` folder.

    The model takes a DataFrame with an ``input`` column and returns one generated string per row; its signature
    declares that and the generation params, and ``input_example`` (default: a generic sentence) is stored
    beside it. ``dst`` must not exist.
    """
    import pandas as pd
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

    signature = ModelSignature(
        inputs=Schema([ColSpec("string", "input")]),
        outputs=Schema([ColSpec("string")]),
        params=ParamSchema([ParamSpec("max_new_tokens", "long", int(max_new_tokens)),
                            ParamSpec("num_beams", "long", 1),
                            ParamSpec("max_input_length", "long", 512),
                            ParamSpec("batch_size", "long", 16)]))
    examples = [str(x) for x in (input_example or [])] or ["summarize: the quick brown fox jumps over the lazy dog."]
    mlflow.pyfunc.save_model(str(dst), python_model=str(T5_MODEL_CODE), artifacts={T5_ARTIFACT: str(hf_dir)},
                             signature=signature, input_example=pd.DataFrame({"input": examples}),
                             pip_requirements=_pip_requirements(), model_config={"max_new_tokens": int(max_new_tokens)})
    return Path(dst)


def hf_folder(folder: str | Path) -> Path:
    """The ``save_pretrained`` folder of a model folder: itself, or the ``t5`` artifact of a T5 pyfunc model."""
    folder = Path(folder)
    if not (folder / "MLmodel").is_file():
        return folder
    from mlflow.models import Model

    arts = Model.load(str(folder / "MLmodel")).flavors.get("python_function", {}).get("artifacts", {})
    path = (arts.get(T5_ARTIFACT) or {}).get("path")
    if not path or not (folder / path).is_dir():
        raise FileNotFoundError(f"{folder} is an MLflow model without a '{T5_ARTIFACT}' folder artifact")
    return folder / path


def register_model(
    run_id: str,
    local_dir: str | Path,
    name: str,
    *,
    artifact_path: str = "model",
    tags: Mapping[str, Any] | None = None,
    aliases: list[str] | tuple[str, ...] = (),
    input_example: list[str] | None = None,
    max_new_tokens: int = 32,
    description: str | None = None,
    metrics: Mapping[str, float] | None = None,
) -> str:
    """Log a ``save_pretrained`` folder as an MLflow 3 logged model of the run and register it; returns
    ``models:/name/version``.

    A T5 or decoder-only LM folder is logged as an MLflow pyfunc model (see :func:`save_t5_pyfunc`; ``input_example`` and
    ``max_new_tokens`` go into it; its MLmodel names the run and the logged model, so
    ``mlflow.models.get_model_info`` reports them), any other folder as it is. The logged model is the run's
    output (the UI's Models column, ``mlflow.search_logged_models``), carries ``tags`` and ``metrics`` (the
    headline numbers, logged on the run against the model), and is finalised READY only once every file is
    there; the registered version is created from it afterwards, with the sha256 tags, ``description`` and
    ``tags``, so a failure leaves no version pointing at half a model. ``artifact_path`` names the run tag that
    records the folder's sha256 (``<artifact_path>.sha256``).
    """
    from mlflow.entities import LoggedModelOutput

    client = MlflowClient()
    all_tags = {k: str(v) for k, v in (tags or {}).items()}
    experiment_id = client.get_run(run_id).info.experiment_id
    # named like the run's artifact path, so runs:/<run>/<artifact_path> keeps resolving (MLflow 3 resolves it
    # through the run's logged model of that name)
    logged = client.create_logged_model(experiment_id, name=artifact_path, source_run_id=run_id,
                                        tags={**all_tags, "registered_name": name})
    try:
        with tempfile.TemporaryDirectory(prefix="pyfunc-") as tmp:
            if is_text_generator_folder(local_dir):
                local_dir = save_t5_pyfunc(local_dir, Path(tmp) / "model", input_example=input_example,
                                           max_new_tokens=max_new_tokens)
                _stamp_mlmodel(Path(local_dir), run_id=run_id, model_id=logged.model_id)
            sha = folder_sha256(local_dir)
            weights = hf_folder(local_dir)  # the pyfunc's t5 artifact, or the folder itself: hash it once
            content = sha if Path(weights) == Path(local_dir) else folder_sha256(weights)
            client.log_model_artifacts(logged.model_id, str(local_dir))
        client.set_logged_model_tags(logged.model_id, {SHA_TAG: sha, CONTENT_TAG: content})
    except BaseException:
        _retry(client.finalize_logged_model, logged.model_id, "FAILED", what="mark the logged model FAILED")
        raise
    client.finalize_logged_model(logged.model_id, "READY")
    client.log_outputs(run_id, models=[LoggedModelOutput(logged.model_id, step=0)])
    for key, value in (metrics or {}).items():
        if isinstance(value, (int, float)) and value == value:
            client.log_metric(run_id, key, float(value), model_id=logged.model_id)
    all_tags[SHA_TAG] = sha
    all_tags[CONTENT_TAG] = content
    try:
        client.create_registered_model(name, tags={"project": "spactor-pipeline", **({"stage": all_tags["stage"]}
                                                                                    if "stage" in all_tags else {})})
    except mlflow.exceptions.MlflowException:
        pass  # already exists
    mv = client.create_model_version(name, source=f"models:/{logged.model_id}", run_id=run_id, tags=all_tags,
                                     description=description, model_id=logged.model_id)
    for alias in aliases:
        client.set_registered_model_alias(name, alias, mv.version)
    set_tags(run_id, {f"registered.{name}": mv.version, f"{artifact_path}.{SHA_TAG}": sha})
    return f"models:/{name}/{mv.version}"


#: the tag that marks a logged model as one of its run's step checkpoints (``log_checkpoints``)
CHECKPOINT_TAG = ("kind", "checkpoint")


def log_checkpoints(run_id: str, checkpoint_root: str | Path, evals: list[Mapping[str, Any]]) -> list[str]:
    """Log each step checkpoint kept under ``checkpoint_root`` as an MLflow 3 logged model of the run, named
    ``checkpoint-<step>`` and tagged ``kind=checkpoint`` and ``step``: its weights (``model.safetensors``) and the
    trainer state at that step, with the evaluation made at that step as the model's metrics, named
    ``checkpoint.<metric>`` (so the run's own metric histories keep one point per evaluation). So MLflow's own
    API ranks a run's checkpoints (:func:`best_checkpoint`; the UI's Models column lists them). A checkpoint
    already logged for this run is not logged again (a resumed or reused run). Returns the logged model ids."""
    from engine.checkpoints import list_checkpoints

    client = MlflowClient()
    experiment_id = client.get_run(run_id).info.experiment_id
    done = {m.tags.get("step") for m in mlflow.search_logged_models(
        experiment_ids=[experiment_id], filter_string=f"source_run_id = '{run_id}' AND tags.kind = 'checkpoint'",
        output_format="list")}
    by_step = {int(e["step"]): e for e in evals if "step" in e}
    ids = []
    for ckpt in list_checkpoints(checkpoint_root):
        step = int(ckpt.name.split("-")[1])
        if str(step) in done:
            continue
        logged = client.create_logged_model(experiment_id, name=f"checkpoint-{step}", source_run_id=run_id,
                                            tags={CHECKPOINT_TAG[0]: CHECKPOINT_TAG[1], "step": str(step)})
        try:
            with tempfile.TemporaryDirectory(prefix="checkpoint-") as tmp:
                for name in ("model.safetensors", "state.json"):
                    shutil.copy2(ckpt / name, Path(tmp) / name)
                client.log_model_artifacts(logged.model_id, tmp)
        except BaseException:
            _retry(client.finalize_logged_model, logged.model_id, "FAILED", what="mark the logged model FAILED")
            raise
        client.finalize_logged_model(logged.model_id, "READY")
        for key, value in by_step.get(step, {}).items():
            if key != "step" and isinstance(value, (int, float)) and value == value:
                client.log_metric(run_id, f"checkpoint.{key}", float(value), step=step, model_id=logged.model_id)
        ids.append(logged.model_id)
    return ids


def best_checkpoint(run_id: str, metric: str, *, lower_is_better: bool = True):
    """The run's checkpoint logged model (:func:`log_checkpoints`) with the best ``metric`` (an evaluation key such
    as ``val_loss``, logged on the model as ``checkpoint.<metric>``), found with ``mlflow.search_logged_models``;
    None when the run logged no checkpoint with that metric."""
    experiment_id = MlflowClient().get_run(run_id).info.experiment_id
    key = f"metrics.`checkpoint.{metric}`"
    found = mlflow.search_logged_models(
        experiment_ids=[experiment_id],
        filter_string=f"source_run_id = '{run_id}' AND tags.kind = 'checkpoint' AND {key} > -1e300",
        order_by=[{"field_name": f"metrics.checkpoint.{metric}", "ascending": lower_is_better}], max_results=1,
        output_format="list")
    return found[0] if found else None


def _stamp_mlmodel(folder: Path, *, run_id: str, model_id: str) -> None:
    """Write the run and the logged model into a saved model's MLmodel (``save_model`` leaves them empty)."""
    from mlflow.models import Model

    model = Model.load(str(folder / "MLmodel"))
    model.run_id, model.model_id = run_id, model_id
    model.save(str(folder / "MLmodel"))


def set_alias(model_uri: str, alias: str) -> None:
    """Point ``alias`` of a registered model at the version ``models:/name/version`` names."""
    name, version = model_uri[len("models:/"):].rsplit("/", 1)
    MlflowClient().set_registered_model_alias(name, alias, version)


def _version(ref: str):
    """The registry's ModelVersion for ``models:/name/version`` or ``models:/name@alias``; FileNotFoundError
    (one line naming the store) when it is not there."""
    body = str(ref)[len("models:/"):]
    client = MlflowClient()
    try:
        if "@" in body:
            name, alias = body.split("@", 1)
            return client.get_model_version_by_alias(name, alias)
        if "/" not in body:
            raise FileNotFoundError(f"model '{ref}' names no version: use models:/{body}/<version> or "
                                    f"models:/{body}@<alias>")
        name, version = body.rsplit("/", 1)
        return client.get_model_version(name, version)
    except mlflow.exceptions.MlflowException as err:
        if not _is_missing(err):
            raise  # the store is down or refuses us: not "the model is gone"
        raise FileNotFoundError(f"model '{ref}' is not in the model registry at {tracking_uri()} "
                                f"({str(err).splitlines()[0]})") from None


def _is_missing(err: Exception) -> bool:
    """An MLflow error that says the thing asked for does not exist (not an outage or a refusal)."""
    return getattr(err, "error_code", None) in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")


def is_model_reference(value: Any) -> bool:
    """A ``models:/`` or ``runs:/`` URI."""
    return isinstance(value, str) and value.startswith(("models:/", "runs:/"))


def model_identity(ref: str | Path) -> str:
    """What a model reference stands for, whatever it is called and wherever it is registered: the sha256 of
    its weights folder (a registered version's ``content_sha256`` tag, or the folder itself for a local path);
    a version registered before that tag existed falls back to its folder's ``sha256`` tag, and a ``runs:/``
    URI to itself (run ids are unique across stores). Raises FileNotFoundError when a ``models:/`` reference
    is not in the current registry. Cache and run keys take this, never the reference string alone: version 1
    of a name in a fresh store is another model than version 1 in the old one."""
    text = str(ref)
    if text.startswith("models:/"):
        mv = _version(text)
        if mv.tags.get(CONTENT_TAG):
            return f"sha256:{mv.tags[CONTENT_TAG]}"
        if mv.tags.get(SHA_TAG):
            return f"sha256-pyfunc:{mv.tags[SHA_TAG]}"
        return f"run:{mv.run_id}:{mv.source}"
    if text.startswith("runs:/"):
        return text
    path = Path(text)
    if path.is_dir():
        return f"sha256:{folder_sha256(hf_folder(path))}"
    raise FileNotFoundError(f"model '{text}' is neither an existing folder nor a models:/ or runs:/ URI")


def run_exists(run_id: str) -> bool:
    """Whether the current tracking store has this run (a deleted run counts as missing)."""
    try:
        return MlflowClient().get_run(run_id).info.lifecycle_stage != "deleted"
    except mlflow.exceptions.MlflowException as err:
        if _is_missing(err):
            return False
        raise


def model_version_info(ref: str) -> dict[str, Any] | None:
    """``{"name", "version", "run_id", "tags", "source"}`` of a ``models:/`` reference, else None."""
    if not str(ref).startswith("models:/"):
        return None
    mv = _version(ref)
    return {"name": mv.name, "version": mv.version, "run_id": mv.run_id, "tags": dict(mv.tags), "source": mv.source}


def resolve_model(ref: str | Path, dst_root: str | Path | None = None) -> Path:
    """A local folder for a model reference: a local path, ``models:/name/version``, ``models:/name@alias``,
    ``runs:/id/path``, or a model by name (``engine.causal_lm``: a packaged name such as ``smollm2``, a
    ``gguf:PATH`` file, a hub id ``hf:ORG/NAME`` or ``ORG/NAME``), which is loaded and saved once under the
    model cache and reused. Registered versions are checked against their sha256 tag."""
    p = Path(str(ref))
    if p.exists():
        return hf_folder(p)
    ref = str(ref)
    if not ref.startswith(("models:/", "runs:/")):
        from engine.causal_lm import PACKAGED, is_reference, materialize

        if is_reference(ref):
            return materialize(ref, Path(dst_root or state_dir() / "model-cache") / "by-reference")
        raise FileNotFoundError(f"model '{ref}' is neither an existing folder, a models:/ or runs:/ URI, a packaged "
                                f"name ({', '.join(PACKAGED)}), a gguf: file nor a hub id (hf:ORG/NAME)")
    expected_sha = None
    source = ref
    if ref.startswith("models:/"):
        mv = _version(ref)
        expected_sha = mv.tags.get(SHA_TAG)
        source = mv.source
    dst_root = Path(dst_root or state_dir() / "model-cache")
    key = hashlib.sha256(source.encode()).hexdigest()[:16]
    dst = dst_root / key
    if not (dst / ".complete").exists():
        dst_root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=dst_root))
        local = mlflow.artifacts.download_artifacts(source, dst_path=str(tmp))
        if expected_sha and folder_sha256(local) != expected_sha:
            raise ValueError(f"model {ref}: sha256 of the downloaded files does not match its registry tag")
        Path(local, ".complete").touch()
        try:
            os.replace(local, dst)  # an empty or missing dst is replaced atomically
        except OSError:  # dst is there and not empty: a concurrent download won, or a half one was left
            if (dst / ".complete").exists():  # never delete a complete copy another process may be reading
                shutil.rmtree(tmp, ignore_errors=True)
                return hf_folder(dst)
            aside = Path(tempfile.mkdtemp(dir=dst_root, prefix=".stale-"))
            os.replace(dst, aside / "old")
            os.replace(local, dst)
            shutil.rmtree(aside, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)
    return hf_folder(dst)


def search_runs(experiment: str, filter_string: str = "", max_results: int = 1000):
    """Runs of an experiment as a pandas DataFrame (empty if the experiment does not exist)."""
    exp = MlflowClient().get_experiment_by_name(experiment)
    import pandas as pd

    if exp is None:
        return pd.DataFrame()
    return mlflow.search_runs([exp.experiment_id], filter_string=filter_string, max_results=max_results)


def mark_status(run_id: str, status: str) -> None:
    """Set a run's status: RUNNING (a resumed run), FINISHED, FAILED or KILLED."""
    RunStatus.from_string(status)  # raises on an unknown status
    if status == "RUNNING":
        MlflowClient().update_run(run_id, status="RUNNING")
    else:
        MlflowClient().set_terminated(run_id, status)
