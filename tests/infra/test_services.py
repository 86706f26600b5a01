"""infra/services.sh against the real servers: start, health, deploy, two pipeline runs through the worker
(the second also pretrains the three model sizes for a few steps, so it logs and registers models), every
listening socket on 127.0.0.1, both UIs in a real (headless Chromium) browser, and a clean stop.

The end-to-end tests are marked ``slow`` (about 3-4 minutes: two pipeline runs through the worker); the checks of the script's refusals are fast.
Screenshots go to $SPACTOR_TEST_ARTIFACTS (default: <test state folder>/test-artifacts/browser).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "infra" / "services.sh"
LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}
SMOKE_OVERRIDES = {"name": "svc-smoke", "max_documents": 200, "vocab_size": 300, "num_proc": 1,
                   "packaged": ["wiki"], "pack_length": 64}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(state: Path, **extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL", "PREFECT_HOME", "PREFECT_UI_API_URL", "BIND_HOST")}
    env.update(SPACTOR_STATE_DIR=str(state), HEALTH_TIMEOUT="150", **extra)
    return env


def _sh(env: dict, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def _http(url: str, body: dict | None = None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"},
                                 method="GET" if body is None else "POST")
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.status, json.loads(resp.read() or b"null")


# --- fast: what the script refuses ----------------------------------------------------------------

def test_script_is_valid_bash_and_documents_its_subcommands():
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0
    env = _env(Path("/nonexistent"))
    usage = _sh(env, "--help")
    assert usage.returncode == 0
    for word in ("up", "down", "status", "deploy", "worker", "BIND_HOST"):
        assert word in usage.stdout
    assert _sh(env, "bogus").returncode == 2


CREDENTIALS = {"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": "s3cret-Pa55word!",
               "PREFECT_API_AUTH_STRING": "spactor:an0ther-s3cret"}


@pytest.mark.parametrize("extra, says", [
    ({}, "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"),
    ({"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": "x"}, "set PREFECT_API_AUTH_STRING=user:password"),
    ({**CREDENTIALS, "PREFECT_API_AUTH_STRING": "no-colon"}, "set PREFECT_API_AUTH_STRING=user:password"),
    ({**CREDENTIALS, "SPACTOR_AUTH": "off"}, "servers reachable from other machines must authenticate"),
    (CREDENTIALS, "needs MLFLOW_ALLOWED_HOSTS"),
])
def test_binding_beyond_loopback_is_refused_without_authentication_or_a_host_allow_list(tmp_path, extra, says):
    env = _env(tmp_path, BIND_HOST="0.0.0.0", PREFECT_PORT=str(_free_port()), MLFLOW_PORT=str(_free_port()), **extra)
    for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "PREFECT_API_AUTH_STRING", "SPACTOR_AUTH"):
        if k not in extra:
            env.pop(k, None)
    out = _sh(env, "up")
    assert out.returncode == 1 and says in out.stderr, out.stderr
    assert not list((tmp_path / "services").glob("*.pid")), "a service was started before the refusal"
    for secret in ("s3cret", "an0ther"):
        assert secret not in out.stdout + out.stderr


def test_the_env_subcommand_never_prints_a_secret(tmp_path):
    out = _sh(_env(tmp_path, SPACTOR_AUTH="on", **CREDENTIALS), "env")
    assert out.returncode == 0 and "export MLFLOW_TRACKING_URI=" in out.stdout
    assert "also export MLFLOW_TRACKING_USERNAME" in out.stdout
    assert "s3cret" not in out.stdout and "an0ther" not in out.stdout


def test_deploy_without_a_server_fails_fast_naming_the_address(tmp_path):
    port = _free_port()
    t0 = time.monotonic()
    out = _sh(_env(tmp_path, PREFECT_PORT=str(port)), "deploy")
    assert out.returncode == 1 and time.monotonic() - t0 < 20
    assert f"no Prefect server answers at http://127.0.0.1:{port}/api" in out.stderr


def test_status_of_nothing_started_says_stopped_and_fails(tmp_path):
    out = _sh(_env(tmp_path, PREFECT_PORT=str(_free_port()), MLFLOW_PORT=str(_free_port())), "status")
    assert out.returncode == 1
    assert [line.split()[1] for line in out.stdout.splitlines()] == ["stopped"] * 3


def test_ray_cluster_yaml_passes_rays_own_validation_and_keeps_the_dashboard_on_loopback():
    import yaml
    from ray.autoscaler._private.util import prepare_config, validate_config

    text = (ROOT / "infra" / "ray-cluster.yaml").read_text()
    config = prepare_config(yaml.safe_load(text))  # what `ray up` does before it launches anything
    validate_config(config)
    head = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head and "infra/services.sh up" in head
    assert not re.search(r"AKIA[0-9A-Z]{16}|aws_secret_access_key|password=", text, re.I)


# --- slow: the real services ----------------------------------------------------------------------

def _service_pids(state: Path) -> dict[str, int]:
    return {p.stem: int(p.read_text()) for p in (state / "services").glob("*.pid")}


def _listening(state: Path) -> set[tuple[str, int, str]]:
    """(ip, port, process) of every listening TCP socket of the started services and all their descendants."""
    import psutil

    found = set()
    for pid in _service_pids(state).values():
        try:
            root = psutil.Process(pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
        for proc in procs:
            try:
                for c in proc.net_connections(kind="inet"):
                    if c.status == psutil.CONN_LISTEN:
                        found.add((c.laddr.ip, c.laddr.port, proc.name()))
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
    return found


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    state = tmp_path_factory.mktemp("services-state")
    ports = {"PREFECT_PORT": str(_free_port()), "MLFLOW_PORT": str(_free_port())}
    env = _env(state, PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS="5", **ports)  # schedules show up sooner
    info = {"env": env, "state": state, "prefect": f"http://127.0.0.1:{ports['PREFECT_PORT']}",
            "mlflow": f"http://127.0.0.1:{ports['MLFLOW_PORT']}", "ports": {int(p) for p in ports.values()}}
    up = _sh(env, "up", timeout=400)
    if up.returncode != 0:
        _sh(env, "down", timeout=120)
        pytest.fail(f"services.sh up failed:\n{up.stdout}\n{up.stderr}")
    yield info
    _sh(env, "down", timeout=120)


#: a few pretraining steps of each size (teacher, target, draft): a logged model per run, registered, with two step
#: checkpoints as logged models too; about a minute on 2 cores, mostly Ray Train starting three times
FAST_PRETRAIN = {"total_steps": 4, "tau": 2, "warmup_steps": 1, "eval_every": 2, "checkpoint_every": 2,
                 "cosine_every": 2, "log_every": 1, "inputs_length": 56, "batch_size": 4}
#: two pipeline runs through the worker, from the typed run form (two vocabulary sizes): a run tree each in MLflow,
#: two parents to compare, stage artifacts in Prefect; the first runs only the corpus stage, the second the corpus
#: and pretraining stages (a `stages` prefix), so both UIs show stage task runs, named subflows and logged models
PIPELINE_RUNS = [{"preset": "tiny", "stages": ["corpus"], "corpus_overrides": {**SMOKE_OVERRIDES, "vocab_size": 300}},
                 {"preset": "tiny", "stages": ["corpus", "pretrain"],
                  "corpus_overrides": {**SMOKE_OVERRIDES, "vocab_size": 320}, "pretrain_overrides": FAST_PRETRAIN}]
#: what each pipeline run's stages are named: its Prefect stage task runs and subflow runs, its MLflow stage runs
STAGE_NAMES = {("corpus",): ({"stage-corpus"}, {"corpus"}, {"corpus-svc-smoke"}),
               ("corpus", "pretrain"): ({"stage-corpus", "stage-pretrain"},
                                        {"corpus", "pretrain-teacher", "pretrain-target", "pretrain-draft"},
                                        {"corpus-svc-smoke", "pretrain-teacher", "pretrain-target", "pretrain-draft"})}


@pytest.fixture(scope="module")
def completed_run(services):
    """Deployments registered with `deploy`, then pipeline/adhoc run twice through the worker (typed parameters),
    with the listening sockets sampled while they run."""
    env = services["env"]
    dep = _sh(env, "deploy", timeout=300)
    assert dep.returncode == 0, f"deploy failed:\n{dep.stdout[-3000:]}\n{dep.stderr[-3000:]}"
    run_env = {**env, "PREFECT_API_URL": services["prefect"] + "/api", "PREFECT_HOME": str(services["state"] / "prefect")}
    sockets, runs, outputs = set(), [], []
    for i, params in enumerate(PIPELINE_RUNS):
        log = services["state"] / f"deployment-run-{i}.log"
        with open(log, "w") as sink:  # a file, not a pipe: the loop below does not read while the run goes on
            proc = subprocess.Popen([str(ROOT / ".venv" / "bin" / "prefect"), "deployment", "run", "pipeline/adhoc",
                                     "--params", json.dumps(params), "--watch"],
                                    env=run_env, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT)
            deadline = time.monotonic() + 300
            while proc.poll() is None and time.monotonic() < deadline:
                sockets |= _listening(services["state"])
                time.sleep(0.5)
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        out = log.read_text()
        assert proc.returncode == 0, f"deployment run failed:\n{out[-4000:]}"
        run_id = re.search(r"UUID: ([0-9a-f-]{36})", out).group(1)
        _, run = _http(f"{services['prefect']}/api/flow_runs/{run_id}")
        assert run["parameters"]["corpus_overrides"] == params["corpus_overrides"]
        runs.append(run)
        outputs.append(out)
    return {"flow_run": runs[0], "flow_runs": runs, "sockets": sockets, "watch_output": "\n".join(outputs)}


def _pipeline_mlflow_runs(services) -> tuple[str, list[dict], list[dict]]:
    """(experiment id, parent runs, stage runs) of the pipeline experiment on the MLflow server."""
    _, exp = _http(services["mlflow"] + "/api/2.0/mlflow/experiments/get-by-name?experiment_name=pipeline")
    eid = exp["experiment"]["experiment_id"]
    _, found = _http(services["mlflow"] + "/api/2.0/mlflow/runs/search", {"experiment_ids": [eid]})
    tags = lambda r: {t["key"]: t["value"] for t in r["data"].get("tags", [])}  # noqa: E731
    parents = [r for r in found["runs"] if "mlflow.parentRunId" not in tags(r)]
    children = [r for r in found["runs"] if "mlflow.parentRunId" in tags(r)]
    for r in found["runs"]:
        r["tags"] = tags(r)
    return eid, parents, children


@pytest.mark.slow
def test_up_starts_healthy_services_that_listen_on_loopback_only(services):
    assert _http(services["prefect"] + "/api/health")[0] == 200
    with urllib.request.urlopen(services["mlflow"] + "/health", timeout=10) as resp:
        assert resp.status == 200
    status = _sh(services["env"], "status")
    assert status.returncode == 0, status.stdout
    listening = _listening(services["state"])
    assert services["ports"] <= {port for _, port, _ in listening}, listening  # the check saw the servers
    exposed = {s for s in listening if s[0] not in LOOPBACK}
    assert not exposed, f"sockets beyond loopback: {exposed}"
    logs = {p.name for p in (services["state"] / "services").glob("*.log")}
    assert {"mlflow.log", "prefect-server.log", "prefect-worker.log"} <= logs


@pytest.mark.slow
def test_deployments_register_and_a_deployment_run_completes_through_the_worker(services, completed_run):
    import yaml

    api = services["prefect"] + "/api"
    _, flows = _http(api + "/flows/filter", {})
    flow_names = {f["id"]: f["name"] for f in flows}
    _, deployments = _http(api + "/deployments/filter", {})
    registered = {f"{flow_names[d['flow_id']]}/{d['name']}": d for d in deployments}
    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    present = [d for d in spec["deployments"] if (ROOT / d["entrypoint"].split(":")[0]).is_file()]
    assert len(registered) == len(present)
    assert {"pipeline/nightly", "pipeline/adhoc", "corpus-prep/adhoc"} <= set(registered)
    nightly = registered["pipeline/nightly"]
    assert [s["schedule"]["cron"] for s in nightly["schedules"]] == ["0 2 * * *"] and nightly["schedules"][0]["active"]
    assert all(d["work_pool_name"] == "spactor-process" for d in deployments)
    # the nightly schedule is live: the server's scheduler queues its next runs at 02:00 UTC by itself
    query = {"deployments": {"id": {"any_": [nightly["id"]]}}, "flow_runs": {"state": {"type": {"any_": ["SCHEDULED"]}}}}
    deadline = time.monotonic() + 60
    while not (scheduled := _http(api + "/flow_runs/filter", query)[1]) and time.monotonic() < deadline:
        time.sleep(1)
    assert scheduled and {r["expected_start_time"][11:16] for r in scheduled} == {"02:00"}

    runs = completed_run["flow_runs"]
    assert all(r["state_type"] == "COMPLETED" and r["deployment_id"] == registered["pipeline/adhoc"]["id"] for r in runs)
    # the MLflow runs went to the MLflow server: one parent per pipeline run, tagged with its Prefect flow run, and
    # its stage run nested under it in the same experiment, writing to this state folder
    _, parents, children = _pipeline_mlflow_runs(services)
    assert sorted(p["tags"]["prefect.flow_run_id"] for p in parents) == sorted(r["id"] for r in runs)
    assert all(p["info"]["status"] == "FINISHED" for p in parents + children)
    assert {c["tags"]["mlflow.parentRunId"] for c in children} == {p["info"]["run_id"] for p in parents}
    assert all(c["tags"]["corpus.path"].startswith(str(services["state"])) for c in children)
    # names that say what ran (issue 35): each stage is a task run of the pipeline run (its Task Runs tab), holding
    # subflow runs named for the stage and role, whose MLflow runs carry the same names; a partial run (a `stages`
    # prefix) still posts its verdict
    for run in runs:
        tasks, subflow_names, mlflow_names = STAGE_NAMES[tuple(run["parameters"]["stages"])]
        _, task_runs = _http(api + "/task_runs/filter", {"flow_runs": {"id": {"any_": [run["id"]]}}})
        assert {t["name"].rsplit("-", 1)[0] for t in task_runs if t["name"].startswith(("stage-", "reuse-"))} == tasks
        _, subflows = _http(api + "/flow_runs/filter", {"flow_runs": {"parent_flow_run_id": {"any_": [run["id"]]}}})
        assert sorted(f["name"] for f in subflows) == sorted(subflow_names)
        parent = next(p for p in parents if p["tags"]["prefect.flow_run_id"] == run["id"])
        assert sorted(c["info"]["run_name"] for c in children
                      if c["tags"]["mlflow.parentRunId"] == parent["info"]["run_id"]) == sorted(mlflow_names)
    assert all(p["tags"].get("corpus.skipped") in ("False", "True") for p in parents)


@pytest.mark.slow
def test_sockets_stay_on_loopback_while_a_flow_runs(services, completed_run):
    sockets = completed_run["sockets"]
    assert services["ports"] <= {port for _, port, _ in sockets}
    exposed = {s for s in sockets if s[0] not in LOOPBACK}
    assert not exposed, f"sockets beyond loopback during the run: {exposed}"


def _browser():
    from selenium import webdriver  # pinned in requirements.txt
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    chromium = os.environ.get("CHROME_BIN") or shutil.which("chromium") or shutil.which("chromium-browser")
    driver = os.environ.get("CHROMEDRIVER") or shutil.which("chromedriver")
    if not chromium or not driver:
        # CI installs Debian's chromium (.ci/run), so there the browser check must run, not be skipped.
        assert not os.environ.get("CI"), "CI=true but headless Chromium is missing: .ci/run failed to install it"
        pytest.skip("headless Chromium is not installed (Debian: apt-get install chromium chromium-driver)")
    opts = Options()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--no-first-run",
                "--disable-extensions", "--window-size=1920,1080"):  # wide enough for MLflow's Models column
        opts.add_argument(arg)
    return webdriver.Chrome(options=opts, service=Service(driver))


@pytest.mark.slow
def test_both_uis_show_the_deployments_and_runs_in_a_real_browser(services, completed_run):
    import yaml

    browser = _browser()  # skips here when selenium or Chromium is missing
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    shots = Path(os.environ.get("SPACTOR_TEST_ARTIFACTS") or services["state"] / "test-artifacts") / "browser"
    shots.mkdir(parents=True, exist_ok=True)
    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    n_present = sum((ROOT / d["entrypoint"].split(":")[0]).is_file() for d in spec["deployments"])

    def page_shows(url: str | None, texts: list[str], shot: str) -> None:
        if url is not None:  # None: the page the last click led to
            browser.get(url)
        body = lambda: browser.find_element(By.TAG_NAME, "body").text  # noqa: E731
        try:
            WebDriverWait(browser, 60).until(lambda _: all(t in body() for t in texts))
        except TimeoutException:
            pass
        browser.save_screenshot(str(shots / shot))
        missing = [t for t in texts if t not in body()]
        assert not missing, f"{url} does not show {missing} (screenshot {shots / shot})"

    def click_text(text: str) -> None:
        """Click the innermost element whose visible text is exactly ``text`` (a tab, a link)."""
        WebDriverWait(browser, 30).until(lambda _: browser.execute_script(
            "return Array.from(document.querySelectorAll('*')).some(e => e.innerText && e.innerText.trim() === "
            "arguments[0] && e.children.length <= 1)", text))
        browser.execute_script(
            "Array.from(document.querySelectorAll('*')).filter(e => e.innerText && e.innerText.trim() === arguments[0]"
            " && e.children.length <= 1)[0].click()", text)

    def links(prefix: str, at_least: int) -> dict[str, str]:
        """{text: href} of the page's links whose href starts with ``prefix`` (waiting until there are
        ``at_least``): a tab's list of runs, not the names the Logs tab or a timeline happen to mention."""
        script = ("return Array.from(document.querySelectorAll('a')).filter(a => (a.getAttribute('href') || '')"
                  ".startsWith(arguments[0]) && a.innerText.trim())"
                  ".map(a => [a.innerText.trim(), a.getAttribute('href')])")
        try:
            WebDriverWait(browser, 30).until(lambda _: len(browser.execute_script(script, prefix)) >= at_least)
        except TimeoutException:
            pass
        return dict(browser.execute_script(script, prefix))

    def cell(run_id: str, column: str) -> str | None:
        """The text of an MLflow runs-table cell: the row of ``run_id``, the column headed ``column``."""
        return browser.execute_script(
            "const c = document.querySelector(arguments[0]); return c ? c.innerText.trim() : null",
            f'[row-id="{run_id}"] [col-id="attributes.`{column}`"]')

    run = completed_run["flow_run"]
    trained = next(r for r in completed_run["flow_runs"] if "pretrain" in r["parameters"]["stages"])
    task_names, subflow_names, stage_run_names = STAGE_NAMES[tuple(trained["parameters"]["stages"])]
    sizes = ("teacher", "target", "draft")
    try:
        page_shows(services["prefect"] + "/deployments",
                   [f"{n_present} Deployments", "adhoc", "pipeline", "corpus-prep"], "prefect-deployments.png")
        # the list is paginated: open the scheduled deployment's own page for its name and schedule
        _, deps = _http(services["prefect"] + "/api/deployments/filter", {})
        nightly = next(d for d in deps if d["name"] == "nightly")
        page_shows(f"{services['prefect']}/deployments/deployment/{nightly['id']}", ["nightly", "At 02:00 AM every day"],
                   "prefect-nightly.png")
        # a pipeline flow run: completed, tagged with its MLflow run, and its stage's artifact in the Artifacts tab
        eid, parents, children = _pipeline_mlflow_runs(services)
        parent = next(p for p in parents if p["tags"]["prefect.flow_run_id"] == run["id"])
        page_shows(f"{services['prefect']}/runs/flow-run/{run['id']}",
                   [run["name"], "Completed", f"mlflow_run_id:{parent['info']['run_id']}", "Artifacts"],
                   "prefect-flow-run.png")
        click_text("Artifacts")
        page_shows(None, ["stage-corpus", "pipeline stage corpus"], "prefect-flow-run-artifacts.png")
        _, arts = _http(services["prefect"] + "/api/artifacts/filter",
                        {"artifacts": {"flow_run_id": {"any_": [run["id"]]}}})
        (art,) = [a for a in arts if a["key"] == "stage-corpus"]
        page_shows(f"{services['prefect']}/artifacts/artifact/{art['id']}",
                   ["stage corpus", "Ran in", "MLflow run:", parent["info"]["run_id"]], "prefect-artifact.png")
        # the run that trained: its Task Runs tab lists a task run per stage (and not the task runs Prefect makes
        # for each subflow), its Subflow Runs tab the subflows named for stage and role; the links are those runs
        _, task_runs = _http(services["prefect"] + "/api/task_runs/filter",
                             {"flow_runs": {"id": {"any_": [trained["id"]]}}})
        stage_tasks = {t["name"]: f"/runs/task-run/{t['id']}" for t in task_runs if t["name"].startswith("stage-")}
        page_shows(f"{services['prefect']}/runs/flow-run/{trained['id']}", [trained["name"], "Completed", "Task Runs"],
                   "prefect-training-run.png")
        click_text("Task Runs")
        n = len(task_names)
        page_shows(None, [f"{n} Task runs", f"({n} Completed)"], "prefect-task-runs.png")  # "(n Completed)": the tab
        shown = links("/runs/task-run/", n)
        assert shown == stage_tasks and {name.rsplit("-", 1)[0] for name in shown} == task_names, shown
        click_text("Subflow Runs")
        _, subflows = _http(services["prefect"] + "/api/flow_runs/filter",
                            {"flow_runs": {"parent_flow_run_id": {"any_": [trained["id"]]}}})
        page_shows(None, [f"{len(subflow_names)} Flow runs"], "prefect-subflow-runs.png")
        shown = links("/runs/flow-run/", len(subflow_names))
        assert set(shown) == subflow_names, shown
        assert shown == {f["name"]: f"/runs/flow-run/{f['id']}" for f in subflows}, shown
        # the MLflow UI: the pipeline experiment opens on its runs table with one row per pipeline run; the stage
        # runs are nested (not rows of their own) until their parent is expanded
        n_runs = len(PIPELINE_RUNS) + sum(len(STAGE_NAMES[tuple(r["stages"])][2]) for r in PIPELINE_RUNS)
        page_shows(f"{services['mlflow']}/#/experiments/{eid}/runs",
                   ["Training runs", "pipeline-tiny", f"{n_runs} matching runs"], "mlflow-pipeline-runs.png")
        rows_text = browser.find_element(By.TAG_NAME, "body").text
        assert rows_text.count("pipeline-tiny") == 2 and not any(name in rows_text for name in stage_run_names)
        expanders = browser.find_elements(By.CSS_SELECTOR, "button[data-component-id*='runnamecellrenderer']")
        assert len(expanders) == 2, "each pipeline run should have an expander for its stage runs"
        tparent = next(p for p in parents if p["tags"]["prefect.flow_run_id"] == trained["id"])["info"]["run_id"]
        browser.find_element(By.CSS_SELECTOR,
                             f'[row-id="{tparent}"] button[data-component-id*="runnamecellrenderer"]').click()
        page_shows(None, sorted(stage_run_names), "mlflow-pipeline-tree.png")
        stage_runs = {c["info"]["run_name"]: c["info"]["run_id"] for c in children
                      if c["tags"]["mlflow.parentRunId"] == tparent}
        assert set(stage_runs) == stage_run_names
        # the Models column: each pretraining run's row shows the model it produced (its MLflow 3 logged model,
        # registered as t5-tiny-<size>-pretrained); the corpus run and the parents produced none and show none
        headers = browser.execute_script(
            "return Array.from(document.querySelectorAll('[role=columnheader]')).map(e => e.innerText.trim())")
        assert "Models" in headers, headers
        want = {stage_runs[f"pretrain-{s}"]: f"t5-tiny-{s}-pretrained" for s in sizes}
        try:
            WebDriverWait(browser, 60).until(lambda _: all(m in (cell(r, "Models") or "") for r, m in want.items()))
        except TimeoutException:
            pass
        browser.save_screenshot(str(shots / "mlflow-models-column.png"))
        for name, run_id in stage_runs.items():
            assert name in (cell(run_id, "Run Name") or "").splitlines(), (name, cell(run_id, "Run Name"))
            models = cell(run_id, "Models")
            if run_id in want:
                assert want[run_id] in (models or ""), f"{name}: the Models column shows {models!r} ({shots})"
            else:
                assert models in ("-", ""), f"{name} trained no model but its Models column shows {models!r}"
        assert all(cell(p["info"]["run_id"], "Models") in ("-", "") for p in parents)
        # a pretraining run's page lists its logged model with its registered name; the experiment's logged models
        # are the three final models and their step checkpoints, each with its source run (opened in the UI's
        # "Model training" view: its default GenAI view calls logged models "Agent versions")
        # the run page as the product links it (tasks.tracking.run_url, in every stage artifact): the "Model
        # training" view, with its model registry link and no GenAI "Agent versions"
        from tasks.tracking import run_page_url

        page_shows(run_page_url(services["mlflow"], eid, stage_runs["pretrain-teacher"]),
                   ["pretrain-teacher", "Logged models (1)", "t5-tiny-teacher-pretrained", "Parent run",
                    "pipeline-tiny", "Model registry"],
                   "mlflow-run-logged-model.png")
        assert "Agent versions" not in browser.find_element(By.TAG_NAME, "body").text
        assert browser.execute_script(  # the section is below the fold: scroll to it for the screenshot
            "const e = Array.from(document.querySelectorAll('*')).filter(e => e.innerText && "
            "e.innerText.trim().startsWith('Logged models') && e.children.length <= 2).pop();"
            "if (e) e.scrollIntoView({block: 'start'}); return !!e")
        time.sleep(0.5)
        browser.save_screenshot(str(shots / "mlflow-run-logged-model-section.png"))
        page_shows(f"{services['mlflow']}/#/experiments/{eid}/models?workflowType=machine_learning",
                   ["Models", "Source run", "checkpoint-2", "checkpoint-4", *[f"pretrain-{s}" for s in sizes],
                    *want.values()], "mlflow-logged-models.png")
        listed = browser.find_element(By.TAG_NAME, "body").text.splitlines()
        assert all(listed.count(name) == len(sizes) for name in ("model", "checkpoint-2", "checkpoint-4")), listed
        # Compare of the two pipeline runs: the param that differs, and the stage wall time metric
        ids = json.dumps([p["info"]["run_id"] for p in parents])
        page_shows(f"{services['mlflow']}/#/compare-runs?runs={ids}&experiments={json.dumps([eid])}",
                   ["Comparing 2 Runs", "corpus.vocab_size", "wall_s.corpus", "stages_run"], "mlflow-compare.png")
        compared = browser.find_element(By.TAG_NAME, "body").text.splitlines()
        (shots / "mlflow-compare.txt").write_text("\n".join(compared))

        def shown(name: str) -> list[str]:
            """The two runs' values in the Compare view's parameter row ``name`` (one line: name, values)."""
            line = next(x for x in compared if x.startswith(f"{name} ") and x.split()[1:])
            return line.split()[1:]

        def shown_metric(name: str) -> list[float]:
            """The two runs' values of metric ``name``: the Metrics grid lists its names, then each row's two
            values in the same order."""
            def number(x: str) -> bool:
                try:
                    float(x)
                except ValueError:
                    return False
                return True

            start = next(i for i, x in enumerate(compared) if x == "Metrics" and compared[i + 1] == "Show diff only")
            names = []
            for x in compared[start + 2:]:
                if number(x):
                    break
                names.append(x)
            values = [float(x) for x in compared[start + 2 + len(names):] if number(x)]
            k = names.index(name)
            return values[2 * k:2 * k + 2]

        assert sorted(shown("corpus.vocab_size")) == ["300", "320"], compared
        # flows.compare reads the same pair from the same server and agrees with the Compare view: the same two
        # runs, and the same stages run / skipped for each
        import mlflow

        from tasks.report.runs import compare as comparison

        before = mlflow.get_tracking_uri()
        mlflow.set_tracking_uri(services["mlflow"])
        try:
            table = comparison("pipeline")
        finally:
            mlflow.set_tracking_uri(before)
        assert sorted(table["run"]) == sorted(p["info"]["run_id"][:8] for p in parents)
        assert sorted(shown_metric("stages_run")) == sorted(table["pipeline.stages_run"].astype(float)), \
            (shown_metric("stages_run"), table["pipeline.stages_run"].tolist(), shots / "mlflow-compare.txt")
    finally:
        browser.quit()
    print(f"screenshots: {shots}")


@pytest.mark.slow
@pytest.mark.reliability
def test_a_prefect_server_restart_in_the_middle_of_a_training_run_lets_the_run_complete(services, completed_run,
                                                                                        tmp_path):
    """The documented outcome (README, reliability table): the Prefect server is stopped while a pretraining run
    trains and started again (~15 s away); training never waits for Prefect, the client retries its calls, and
    the run completes: exit 0, the flow run COMPLETED on the server, the MLflow run FINISHED, a model registered.
    (A server that stays away past the client's retries crashes the flow run; the rerun of the same command then
    resumes from the last checkpoint: tests/test_reliability.py::test_pipeline_process_killed_mid_training...)"""
    import signal

    _, _, children = _pipeline_mlflow_runs(services)
    corpus = children[0]["tags"]["corpus.path"]
    exports = dict(line[len("export "):].split("=", 1) for line in _sh(services["env"], "env").stdout.splitlines()
                   if line.startswith("export "))
    env = {**services["env"], **exports, "PREFECT_HOME": str(services["state"] / "prefect-client")}
    out = tmp_path / "runs"
    cmd = [str(ROOT / ".venv" / "bin" / "python"), "-m", "flows.pretrain", "--preset", "tiny",
           "--set", f"corpus_dir={corpus}", "--set", f"output_root={out}", "--set", "inputs_length=56",
           "--set", "total_steps=160", "--set", "tau=20", "--set", "batch_size=4", "--set", "checkpoint_every=20",
           "--set", "eval_every=80", "--set", "register_as=t5-restart-test"]
    log = tmp_path / "run.log"
    with open(log, "w") as sink:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while proc.poll() is None and time.monotonic() < deadline and not list(out.rglob("step-*/checksums.json")):
            time.sleep(0.2)
        assert proc.poll() is None, "the run ended before the restart:\n" + log.read_text()[-3000:]
        server = _service_pids(services["state"])["prefect-server"]
        os.killpg(server, signal.SIGTERM)  # the server and its children
        while time.monotonic() < deadline:
            try:
                _http(services["prefect"] + "/api/health")
            except OSError:
                break
            time.sleep(0.2)
        (services["state"] / "services" / "prefect-server.pid").unlink(missing_ok=True)
        up = _sh(services["env"], "up", timeout=300)  # starts the server again; the others are still running
        assert up.returncode == 0 and "prefect-server: already running" not in up.stdout, up.stdout + up.stderr
        rc = proc.wait(timeout=600)
    text = log.read_text()
    assert rc == 0, text[-4000:]
    assert not list(out.rglob("step-*")) or list(out.rglob("final/checksums.json"))
    _, runs = _http(services["prefect"] + "/api/flow_runs/filter", {"flows": {"name": {"any_": ["pretrain"]}}})
    runs = [r for r in runs if r["parent_task_run_id"] is None]  # not the pipeline run's pretrain-<size> subflows
    assert runs and all(r["state_type"] == "COMPLETED" for r in runs), [(r["name"], r["state_type"]) for r in runs]
    _, exp = _http(services["mlflow"] + "/api/2.0/mlflow/experiments/get-by-name?experiment_name=pretrain")
    _, found = _http(services["mlflow"] + "/api/2.0/mlflow/runs/search", {"experiment_ids": [exp["experiment"]["experiment_id"]]})
    assert [r["info"]["status"] for r in found["runs"]] == ["FINISHED"]
    assert "registered model: models:/t5-restart-test/1" in text


@pytest.mark.slow
def test_down_stops_the_worker_first_then_everything(services):
    pids = _service_pids(services["state"])
    assert set(pids) == {"mlflow", "prefect-server", "prefect-worker"}
    out = _sh(services["env"], "down", timeout=120)
    assert out.returncode == 0
    order = [line.split(":")[0] for line in out.stdout.splitlines()]
    assert order == ["prefect-worker", "prefect-server", "mlflow"]
    import psutil

    time.sleep(0.5)
    groups = set(pids.values())  # each service runs in its own process group, children included
    left = []
    for proc in psutil.process_iter(["pid", "status", "cmdline"]):
        try:
            if os.getpgid(proc.pid) in groups and proc.info["status"] != psutil.STATUS_ZOMBIE:
                left.append((proc.pid, " ".join(proc.info["cmdline"] or [])[:100]))
        except (ProcessLookupError, psutil.NoSuchProcess):
            continue
    assert not left, f"still running after down: {left}"
    for port in services["ports"]:
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still accepts connections"
    assert not _service_pids(services["state"])


def _authed(url: str, credentials: str, body: dict | None = None):
    import base64

    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="GET" if body is None else "POST", headers={
        "Content-Type": "application/json", "Authorization": "Basic " + base64.b64encode(credentials.encode()).decode()})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.status, json.loads(resp.read() or b"null")


@pytest.mark.slow
def test_with_authentication_on_requests_without_credentials_get_401_and_a_run_with_them_completes(tmp_path):
    """SPACTOR_AUTH=on on 127.0.0.1 (what BIND_HOST=<interface> turns on by itself): both servers refuse a request
    without credentials or with a wrong password (401); a pretraining flow run with the credentials in its
    environment completes (a pipeline run of the corpus and pretraining stages: the Prefect flow run COMPLETED,
    MLflow runs with the metrics a Ray worker logged from rank 0, registered models), and no secret lands in
    MLflow params or tags."""
    import urllib.error

    state = tmp_path / "state"
    ports = {"PREFECT_PORT": str(_free_port()), "MLFLOW_PORT": str(_free_port())}
    env = _env(state, SPACTOR_AUTH="on", **CREDENTIALS, **ports)
    mlflow, prefect = f"http://127.0.0.1:{ports['MLFLOW_PORT']}", f"http://127.0.0.1:{ports['PREFECT_PORT']}"
    mlflow_cred = f"{CREDENTIALS['MLFLOW_TRACKING_USERNAME']}:{CREDENTIALS['MLFLOW_TRACKING_PASSWORD']}"
    up = _sh(env, "up", timeout=400)
    try:
        assert up.returncode == 0, f"{up.stdout}\n{up.stderr}"
        assert "authentication: on" in up.stdout
        for url in (f"{mlflow}/api/2.0/mlflow/experiments/search?max_results=1", f"{prefect}/api/admin/version"):
            with pytest.raises(urllib.error.HTTPError) as err:
                urllib.request.urlopen(url, timeout=10)
            assert err.value.code == 401, url
            with pytest.raises(urllib.error.HTTPError) as err:
                _authed(url, "admin:wrong-password")
            assert err.value.code == 401, url
        assert _authed(f"{prefect}/api/admin/version", CREDENTIALS["PREFECT_API_AUTH_STRING"])[0] == 200
        assert _sh(env, "status").returncode == 0  # the worker is online (asked with the credentials)
        exports = dict(line[len("export "):].split("=", 1) for line in _sh(env, "env").stdout.splitlines()
                       if line.startswith("export "))
        run_env = {**env, **exports, "PREFECT_HOME": str(state / "prefect-client")}
        fast = ["pretrain.total_steps=6", "pretrain.tau=3", "pretrain.eval_every=3", "pretrain.checkpoint_every=3",
                "pretrain.cosine_every=3", "pretrain.log_every=1", "pretrain.threads_per_worker=1",
                "corpus.max_documents=800", "corpus.vocab_size=800", 'stages=["corpus", "pretrain"]']
        cmd = [str(ROOT / ".venv" / "bin" / "python"), "-m", "flows.pipeline", "--preset", "tiny",
               *[a for kv in fast for a in ("--set", kv)]]
        run = subprocess.run(cmd, cwd=ROOT, env=run_env, capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        _, exp = _authed(f"{mlflow}/api/2.0/mlflow/experiments/get-by-name?experiment_name=pipeline", mlflow_cred)
        _, found = _authed(f"{mlflow}/api/2.0/mlflow/runs/search", mlflow_cred,
                           {"experiment_ids": [exp["experiment"]["experiment_id"]]})
        runs = {r["info"]["run_name"]: r for r in found["runs"]}
        assert {"pipeline-tiny", "pretrain-teacher", "pretrain-target", "pretrain-draft"} <= set(runs), sorted(runs)
        assert all(r["info"]["status"] == "FINISHED" for r in found["runs"])
        mlrun = runs["pretrain-teacher"]
        logged = {m["key"] for m in mlrun["data"].get("metrics", [])}
        assert {"loss", "sc_loss"} <= logged, logged  # logged by the Ray worker's rank 0
        _, version = _authed(f"{mlflow}/api/2.0/mlflow/model-versions/get?name=t5-tiny-teacher-pretrained&version=1",
                             mlflow_cred)
        assert version["model_version"]["run_id"] == mlrun["info"]["run_id"]
        parent = runs["pipeline-tiny"]
        flow_run_id = {t["key"]: t["value"] for t in parent["data"]["tags"]}["prefect.flow_run_id"]
        _, flow_run = _authed(f"{prefect}/api/flow_runs/{flow_run_id}", CREDENTIALS["PREFECT_API_AUTH_STRING"])
        assert flow_run["state_type"] == "COMPLETED"
        stored = json.dumps([[r["data"].get("params", []), r["data"].get("tags", [])] for r in found["runs"]])
        assert "s3cret" not in stored and "an0ther" not in stored
    finally:
        _sh(env, "down", timeout=120)
