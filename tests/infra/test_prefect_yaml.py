"""prefect.yaml: every entrypoint imports, every deployment's parameters validate against its flow's config,
work pools and schedules are defined once, every flow has an ad-hoc deployment, and no secrets are in it.

Deployments whose flow module is not in the checkout yet are skipped, each with a message naming it.
"""

from __future__ import annotations

import ast
import functools
import inspect
import re
import sys
import typing
from pathlib import Path

import pytest
import yaml

from flows._cli import ConfigError, build_config

ROOT = Path(__file__).resolve().parents[2]
SPEC = yaml.safe_load((ROOT / "prefect.yaml").read_text())
DEPLOYMENTS = SPEC["deployments"]


def _ident(d: dict) -> str:
    return f"{d['entrypoint'].split(':')[1]}/{d['name']}"



@functools.lru_cache(maxsize=None)
def _load(entrypoint: str):
    """The flow as the worker loads it (Prefect's own loader), and the module it lives in."""
    from prefect.flows import load_flow_from_entrypoint

    path, fn = entrypoint.split(":")
    flow = load_flow_from_entrypoint(f"{ROOT / path}:{fn}")
    return flow, sys.modules[flow.fn.__module__]


def _present(d: dict):
    path = d["entrypoint"].split(":")[0]
    assert (ROOT / path).is_file(), f"deployment '{d['name']}' points at {path}, which does not exist"
    return _load(d["entrypoint"])


def _config_class(flow) -> type:
    hint = typing.get_type_hints(flow.fn)["config"]
    classes = [a for a in typing.get_args(hint) if isinstance(a, type) and a is not type(None)]
    assert len(classes) == 1, f"{flow.name}: parameter 'config' should be Optional[<Config>], got {hint}"
    return classes[0]


def check_deployment_parameters(d: dict, parameters: dict) -> None:
    """What a deployment run does with its parameters: Prefect validates them against the flow's signature,
    then the flow builds its config from preset + overrides. Raises on any problem."""
    flow, module = _load(d["entrypoint"])
    validated = flow.validate_parameters(parameters)
    if hasattr(module, "pipeline_config"):  # the pipeline's run form also has typed fields
        module.pipeline_config(**validated)
        return
    build_config(_config_class(flow), module.PRESETS, parameters.get("preset", "tiny"), parameters.get("overrides"))


def _flows_in_source() -> dict[str, tuple[str, str]]:
    """flow name -> (file, function) for every @flow(name=...) function under flows/ (read with ast)."""
    out = {}
    for path in sorted((ROOT / "flows").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.FunctionDef):
                continue
            for dec in node.decorator_list:
                if isinstance(dec, ast.Call) and getattr(dec.func, "id", None) == "flow":
                    name = next((k.value.value for k in dec.keywords if k.arg == "name"), node.name)
                    out[name] = (f"flows/{path.name}", node.name)
    return out


@pytest.mark.parametrize("d", DEPLOYMENTS, ids=_ident)
def test_deployment_parameters_validate_against_the_flow_config(d):
    flow, module = _present(d)
    params = set(inspect.signature(flow.fn).parameters)
    assert {"preset", "overrides", "config"} <= params, f"{flow.name}: signature lacks preset/overrides/config"
    assert "tiny" in module.PRESETS and set(module.PRESETS) >= {"tiny", "small", "base"}
    check_deployment_parameters(d, dict(d.get("parameters") or {}))
    for sched in d.get("schedules") or []:  # a schedule may override parameters
        check_deployment_parameters(d, {**(d.get("parameters") or {}), **(sched.get("parameters") or {})})
    assert set(d.get("parameters") or {}) <= params


def test_parameter_check_rejects_unknown_overrides_parameters_and_presets():
    d = next(x for x in DEPLOYMENTS if x["entrypoint"] == "flows/corpus_prep.py:corpus_prep")
    check_deployment_parameters(d, {"preset": "tiny", "overrides": {"vocab_size": 500}})
    with pytest.raises(ConfigError, match="no_such_field"):
        check_deployment_parameters(d, {"preset": "tiny", "overrides": {"no_such_field": 1}})
    with pytest.raises(ConfigError, match="vocab_size"):
        check_deployment_parameters(d, {"preset": "tiny", "overrides": {"vocab_size": -1}})
    with pytest.raises(Exception, match="preset: Input should be 'tiny'"):  # the run form's drop-down
        check_deployment_parameters(d, {"preset": "huge"})
    with pytest.raises(Exception, match="presett"):
        check_deployment_parameters(d, {"presett": "tiny"})


@pytest.mark.parametrize("d", DEPLOYMENTS, ids=_ident)
def test_every_run_form_field_is_typed_and_has_a_default_and_a_description(d):
    """What Prefect's UI draws the run form from: the flow's parameter schema (types, defaults, docstring)."""
    from prefect.utilities.callables import parameter_schema

    flow, module = _present(d)
    schema = parameter_schema(flow.fn).model_dump()
    assert not schema.get("required"), f"{flow.name}: a run form field without a default"
    for name, prop in schema["properties"].items():
        assert prop.get("description"), f"{flow.name}: parameter '{name}' has no description"
        assert "default" in prop, f"{flow.name}: parameter '{name}' has no default"
        assert prop.get("type") or prop.get("anyOf") or prop.get("enum") or prop.get("$ref"), \
            f"{flow.name}: parameter '{name}' is untyped"
    assert schema["properties"]["preset"]["enum"] == list(module.PRESETS)
    assert schema["properties"]["preset"]["default"] == "tiny"
    assert (d.get("parameters") or {}).get("preset", "tiny") in module.PRESETS


def test_the_pipeline_run_form_has_from_stage_and_a_typed_overrides_form_per_stage():
    from prefect.utilities.callables import parameter_schema

    from engine.config.pipeline import STAGES, PipelineConfig, tiny
    from flows.pipeline import pipeline, pipeline_config

    schema = parameter_schema(pipeline.fn).model_dump()
    props, defs = schema["properties"], schema["definitions"]
    assert props["from_stage"]["anyOf"][0]["enum"] == list(STAGES)
    for stage in STAGES:
        ref = props[f"{stage}_overrides"]["anyOf"][0]["$ref"].rsplit("/", 1)[1]
        section = PipelineConfig.model_fields[stage].annotation
        assert set(defs[ref]["properties"]) == set(section.model_fields), stage  # every field of the stage's config
        assert all(f.get("description") for f in defs[ref]["properties"].values()), stage
    # what a UI run sends: JSON for the typed fields, validated by Prefect, merged over the preset
    params = pipeline.validate_parameters({"preset": "tiny", "from_stage": "finetune",
                                           "pretrain_overrides": {"total_steps": 900, "model": {"d_model": 48, "num_heads": 6}},
                                           "sd_benchmark_overrides": {"gammas": [3]}})
    cfg = pipeline_config(**params)
    base = tiny()
    assert cfg.from_stage == "finetune" and cfg.pretrain.total_steps == 900 and cfg.sd_benchmark.gammas == [3]
    assert cfg.pretrain.model.d_model == 48 and cfg.pretrain.model.num_heads == 6
    assert cfg.pretrain.model.tie_word_embeddings is base.pretrain.model.tie_word_embeddings is True  # the preset's
    assert cfg.finetune == base.finetune and cfg.pretrain.lr == base.pretrain.lr  # unset fields keep the preset's
    with pytest.raises(Exception, match="no_such_field"):
        pipeline.validate_parameters({"pretrain_overrides": {"no_such_field": 1}})
    with pytest.raises(ConfigError, match="total_steps"):
        pipeline_config(**pipeline.validate_parameters({"pretrain_overrides": {"total_steps": -1}}))
    with pytest.raises(ConfigError, match="either config"):
        pipeline_config(config=base, from_stage="finetune")


#: (flow entrypoint, the config fields that name models)
MODEL_INPUTS = {"flows/finetune.py:finetune_flow": ("model",), "flows/evaluate.py:evaluate_flow": ("model",),
                "flows/distill.py:distill_flow": ("teacher", "student"),
                "flows/sd_benchmark.py:sd_benchmark": ("target", "drafts")}


def stage_deployment_model_refs() -> dict[str, list[str]]:
    """deployment -> the model references its default parameters name (``label=`` prefixes removed)."""
    out = {}
    for d in DEPLOYMENTS:
        fields = MODEL_INPUTS.get(d["entrypoint"])
        if not fields or d["name"] != "adhoc":
            continue
        overrides = (d.get("parameters") or {}).get("overrides") or {}
        refs = []
        for f in fields:
            v = overrides.get(f)
            refs += [str(x).split("=", 1)[-1] for x in (v if isinstance(v, list) else [v] if v else [])]
        out[_ident(d)] = refs
    return out


def test_stage_deployments_default_their_model_inputs_to_registry_aliases():
    refs = stage_deployment_model_refs()
    assert set(refs) == {f"{e.split(':')[1]}/adhoc" for e in MODEL_INPUTS}
    for name, rs in refs.items():
        assert rs, f"{name}: no default model input"
        assert all(re.fullmatch(r"models:/[\w.-]+@[\w-]+", r) for r in rs), f"{name}: {rs} are not alias URIs"
    # the aliases the pipeline sets (the tiny pipeline's run makes them resolve: tests/flows/test_pipeline.py)
    aliases = {r.split("@")[1] for rs in refs.values() for r in rs}
    source = (ROOT / "flows" / "pipeline.py").read_text() + (ROOT / "tasks" / "distill.py").read_text()
    assert all(f'"{a}"' in source for a in aliases), aliases


def test_every_flow_has_an_adhoc_deployment_and_full_names_are_unique():
    flows = _flows_in_source()
    by_entry = {(f, fn): name for name, (f, fn) in flows.items()}
    full_names = []
    for d in DEPLOYMENTS:
        path, fn = d["entrypoint"].split(":")
        assert re.fullmatch(r"flows/[a-z_]+\.py", path), f"entrypoint {d['entrypoint']} is not flows/<name>.py:<fn>"
        assert (path, fn) in by_entry, f"{d['entrypoint']}: no @flow function '{fn}' in {path}"
        full_names.append(f"{by_entry[(path, fn)]}/{d['name']}")
    assert len(full_names) == len(set(full_names)), f"duplicate deployment names: {sorted(full_names)}"
    assert {"pipeline/nightly", "pipeline/adhoc"} <= set(full_names)
    assert "active-learning/weekly" in full_names
    lacking = sorted(name for name in flows if f"{name}/adhoc" not in full_names)
    assert not lacking, f"flows without an adhoc deployment in prefect.yaml: {lacking}"


def test_work_pools_and_schedules_are_defined_once_and_used_by_alias():
    pools = SPEC["definitions"]["work_pools"]
    schedules = SPEC["definitions"]["schedules"]
    assert pools and schedules
    for d in DEPLOYMENTS:
        # yaml aliases load as the very same object as their anchor
        assert any(d["work_pool"] is p for p in pools.values()), f"{_ident(d)}: work_pool is not an alias"
        for s in d.get("schedules") or []:
            assert any(s is x for x in schedules.values()), f"{_ident(d)}: schedule is not an alias"
    text = (ROOT / "prefect.yaml").read_text()
    assert text.count("cron:") == len(schedules), "cron schedules written outside definitions.schedules"


def test_scheduled_deployments_have_valid_cron_schedules_and_the_nightly_pipeline_is_tiny():
    from prefect.client.schemas.schedules import CronSchedule

    for s in SPEC["definitions"]["schedules"].values():
        CronSchedule(cron=s["cron"], timezone=s.get("timezone"))  # raises on an invalid cron or timezone
    nightly = next(d for d in DEPLOYMENTS if d["name"] == "nightly" and d["entrypoint"] == "flows/pipeline.py:pipeline")
    assert nightly["parameters"]["preset"] == "tiny" and nightly["schedules"]
    weekly = next(d for d in DEPLOYMENTS if d["name"] == "weekly")
    assert weekly["entrypoint"] == "flows/active_learning.py:active_learning" and weekly["schedules"]


def test_pull_step_changes_into_the_project_root_that_services_sh_exports(monkeypatch):
    from prefect.utilities.templating import apply_values

    (step,) = SPEC["pull"]
    directory = step["prefect.deployments.steps.set_working_directory"]["directory"]
    monkeypatch.setenv("SPACTOR_PROJECT_ROOT", str(ROOT))  # env placeholders are read from os.environ
    assert apply_values(directory, {}) == str(ROOT)
    script = (ROOT / "infra" / "services.sh").read_text()
    assert re.search(r"export .*SPACTOR_PROJECT_ROOT=", script)
    pool = SPEC["definitions"]["work_pools"]["process"]["name"]
    assert f'SPACTOR_WORK_POOL:-{pool}}}' in script, "services.sh's default work pool differs from prefect.yaml's"


def _walk(node, path=""):
    if isinstance(node, dict):
        for k, v in node.items():
            yield f"{path}.{k}", str(k)
            yield from _walk(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk(v, f"{path}[{i}]")
    elif node is not None:
        yield path, str(node)


def test_prefect_yaml_holds_no_secrets():
    secretish = re.compile(r"passw|secret|token|api_?key|access_key|private_key|credential", re.I)
    for where, text in _walk(SPEC):
        assert not secretish.search(text), f"prefect.yaml {where}: '{text}' looks like a credential; use env or blocks"
        assert not re.search(r"://[^/\s:@]+:[^/\s@]+@", text), f"prefect.yaml {where}: a URL with user:password"
    templates = set(re.findall(r"{{\s*([^}\s]+)\s*}}", (ROOT / "prefect.yaml").read_text()))
    assert templates <= {"$SPACTOR_PROJECT_ROOT"}, f"unexpected templates: {templates}"
