"""Registered T5 versions are MLflow pyfunc models built from code: ``mlflow.pyfunc.load_model`` generates text for
a DataFrame with an ``input`` column, ``mlflow models serve`` serves them, no pickle is loaded, and the pipeline
still gets the plain ``save_pretrained`` folder from ``resolve_model``."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import make_t5_dir

INPUTS = ["the river and the city", "war", "music of the century and the party of the house"]


@pytest.fixture(scope="module")
def registered(tiny_corpus, tmp_path_factory):
    from tasks import tracking

    folder = make_t5_dir(str(Path(tiny_corpus) / "tokenizer"), tmp_path_factory.mktemp("t5") / "model", seed=3)
    with tracking.start_run("pyfunc-test", "register") as run_id:
        uri = tracking.register_model(run_id, folder, "pyfunc-test-t5", aliases=["target"],
                                      input_example=INPUTS[:2], max_new_tokens=6, tags={"stage": "test"},
                                      description="a random T5 for the tests", metrics={"test.exact_match": 0.25})
    return {"uri": uri, "folder": folder, "run_id": run_id}


def _greedy(folder, texts, max_new_tokens):
    from engine.finetune_worker import load_model_and_tokenizer
    from models.generation import batched_generate

    model, tok = load_model_and_tokenizer(folder)
    return batched_generate(model, tok, texts, batch_size=1, max_new_tokens=max_new_tokens)[0]


def test_a_registered_t5_version_loads_with_pyfunc_and_gives_one_greedy_output_per_row(registered):
    import mlflow
    import pandas as pd

    model = mlflow.pyfunc.load_model(registered["uri"])
    out = model.predict(pd.DataFrame({"input": INPUTS}))
    assert len(out) == len(INPUTS) and all(isinstance(x, str) for x in out)
    assert list(out) == _greedy(registered["folder"], INPUTS, 6)  # the version's default max_new_tokens
    longer = model.predict(pd.DataFrame({"input": INPUTS}), params={"max_new_tokens": 9})
    assert list(longer) == _greedy(registered["folder"], INPUTS, 9)
    by_alias = mlflow.pyfunc.load_model("models:/pyfunc-test-t5@target")
    assert list(by_alias.predict(pd.DataFrame({"input": INPUTS}))) == list(out)


def test_a_registered_decoder_only_version_answers_through_its_chat_template_like_batched_generate(
        tiny_corpus, tmp_path):
    import mlflow
    import pandas as pd

    from tasks import tracking
    from tests.conftest import make_llama_dir

    folder = make_llama_dir(str(Path(tiny_corpus) / "tokenizer"), tmp_path / "model", seed=4, head_scale=10.0)
    with tracking.start_run("pyfunc-test", "register-llama") as run_id:
        uri = tracking.register_model(run_id, folder, "pyfunc-test-llama", input_example=INPUTS[:2], max_new_tokens=5)
    out = mlflow.pyfunc.load_model(uri).predict(pd.DataFrame({"input": INPUTS}))
    assert list(out) == _greedy(folder, INPUTS, 5)  # prompt cut off, padding on the left changes nothing


def test_a_registered_version_comes_from_an_mlflow3_logged_model_of_its_run_with_metrics_and_description(registered):
    import mlflow
    from mlflow import MlflowClient

    client = MlflowClient()
    name, version = registered["uri"][len("models:/"):].rsplit("/", 1)
    mv = client.get_model_version(name, version)
    assert mv.source.startswith("models:/m-") and mv.description == "a random T5 for the tests"
    model_id = mv.source[len("models:/"):]
    run = client.get_run(registered["run_id"])
    assert [o.model_id for o in run.outputs.model_outputs] == [model_id]  # the UI's Models column
    (logged,) = mlflow.search_logged_models(experiment_ids=[run.info.experiment_id], output_format="list",
                                            filter_string=f"source_run_id = '{registered['run_id']}'")
    assert logged.name == "model" and logged.tags["registered_name"] == name  # runs:/<run>/model resolves
    assert logged.model_id == model_id and logged.source_run_id == registered["run_id"] and logged.status == "READY"
    assert {m.key: m.value for m in logged.metrics} == {"test.exact_match": 0.25}
    assert logged.tags["stage"] == "test" and logged.tags["content_sha256"] == mv.tags["content_sha256"]
    info = mlflow.models.get_model_info(registered["uri"])
    assert info.run_id == registered["run_id"] and info.model_id == model_id
    assert client.get_registered_model(name).tags["project"] == "spactor-pipeline"


def test_a_registered_t5_version_has_a_signature_an_input_example_and_no_pickle(registered):
    import mlflow

    info = mlflow.models.get_model_info(registered["uri"])
    assert info.signature.inputs.input_names() == ["input"]
    assert {p.name for p in info.signature.params.params} >= {"max_new_tokens", "num_beams"}
    assert info.saved_input_example_info is not None
    from tasks import tracking


    folder = tracking.resolve_model(registered["uri"])  # sha256-checked copy of the version
    root = folder.parent.parent
    assert (root / "MLmodel").is_file()
    example = json.loads((root / "input_example.json").read_text())
    assert example["columns"] == ["input"] and [r[0] for r in example["data"]] == INPUTS[:2]
    files = [p.name for p in root.rglob("*") if p.is_file()]
    assert not [f for f in files if f.endswith((".pkl", ".pickle", ".bin", ".pt", ".cloudpickle"))], files
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()


def test_resolve_model_hands_the_pipeline_the_save_pretrained_folder_of_a_pyfunc_version(registered):
    from tasks import tracking

    folder = tracking.resolve_model(registered["uri"])
    assert tracking.is_text_generator_folder(folder) and not (folder / "MLmodel").exists()
    assert tracking.hf_folder(folder.parent.parent) == folder  # a local pyfunc folder maps the same way
    assert tracking.resolve_model(str(folder.parent.parent)) == folder


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_mlflow_models_serve_answers_invocations_with_the_same_text(registered):
    import mlflow
    import pandas as pd

    port = _free_port()
    cli = Path(sys.executable).parent / "mlflow"
    env = {**os.environ, "PATH": f"{cli.parent}:{os.environ.get('PATH', '')}"}  # the scoring server runs uvicorn
    proc = subprocess.Popen([str(cli), "models", "serve", "-m", "models:/pyfunc-test-t5@target", "--env-manager",
                             "local", "-h", "127.0.0.1", "-p", str(port), "-w", "1"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 120
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2)
                break
            except OSError:
                assert time.time() < deadline, "mlflow models serve did not answer /ping in 120 s"
                time.sleep(1)
        def call(payload: dict) -> list:
            req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=json.dumps(payload).encode(),
                                         headers={"Content-Type": "application/json"})
            return json.loads(urllib.request.urlopen(req, timeout=60).read())["predictions"]

        served = call({"dataframe_split": {"columns": ["input"], "data": [[x] for x in INPUTS]}})
        # MLflow's other input formats (the README's) give the same text; params reach the model
        assert call({"dataframe_records": [{"input": x} for x in INPUTS]}) == served
        assert call({"inputs": {"input": INPUTS}}) == served
        short = call({"dataframe_records": [{"input": x} for x in INPUTS], "params": {"max_new_tokens": 2}})
        assert all(len(s.split()) <= 2 for s in short) and short != served
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    local = mlflow.pyfunc.load_model(registered["uri"]).predict(pd.DataFrame({"input": INPUTS}))
    assert served == list(local)
