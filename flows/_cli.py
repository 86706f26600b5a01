"""Shared command-line front end for every flow: ``python -m flows.<name> --preset tiny --set key=value``.

Each flow module defines a pydantic config (``extra="forbid"``) and presets as plain functions; this module
parses the command line into that config, turns validation errors into one readable line per bad field,
and prints where the results went.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import inspect
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Optional, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from engine.config.base import FlowConfig
from tasks.runtime.orchestration import USER_ERRORS
from tasks.runtime.tracked_run import RunLockedError

C = TypeVar("C", bound="FlowConfig")


class ConfigError(ValueError):
    """A user-facing configuration problem (one line, names the field)."""


def format_validation_error(err: ValidationError, prefix: str = "") -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"])
        name = f"{prefix}{loc}"
        if not loc:  # a rule across fields (a model validator): its message names them
            lines.append(f"config{' ' + prefix.rstrip('.') if prefix else ''}: {e['msg'].removeprefix('Value error, ')}")
        elif e["type"] == "extra_forbidden":
            lines.append(f"unknown config key '{name}' (check the spelling; see --help for the fields)")
        else:
            got = e.get("input")
            got_s = "" if isinstance(got, (dict, list)) else f" (got {got!r})"
            lines.append(f"config field '{name}': {e['msg']}{got_s}")
    return "; ".join(lines)


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _set_nested(d: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    for k in keys[:-1]:
        if not isinstance(d.get(k), dict):
            d[k] = {} if k not in d else d[k]
            if not isinstance(d[k], dict):
                raise ConfigError(f"cannot set '{dotted}': '{k}' is not a nested config")
        d = d[k]
    d[keys[-1]] = value


# --- the typed run form of a deployment (Prefect's UI builds it from the flow's signature and docstring) ---

#: descriptions of the parameters every flow shares; :func:`documented` adds them to the flow's docstring
SHARED_PARAMS = {
    "preset": "the preset the config starts from (tiny: seconds to minutes on a laptop; laptop: the measured "
              "laptop-scale run; small, base: GPU presets)",
    "overrides": 'config fields to change, as {"key": value}; dotted keys reach nested fields, e.g. '
                 '{"model.d_model": 128} (the same as --set key=value on the command line)',
    "config": "a whole config instead of preset + overrides (what the command line and other flows pass)",
    "parent_run_id": "MLflow run to nest this flow's run under (set by the pipeline; leave empty for a lone run)",
    "run_name": "name of this flow's MLflow run (the pipeline names each stage's, e.g. pretrain-teacher; leave "
                "empty for the default)",
}


def preset_type(presets: Mapping[str, Any]) -> Any:
    """The ``Literal`` of a flow's preset names, so the run form offers them as a drop-down."""
    return Literal[tuple(presets)]


def documented(**params: str) -> Callable[[Callable], Callable]:
    """Decorator (below ``@flow``): appends a Google-style ``Args:`` section for the flow's parameters, which
    Prefect shows under each field of a deployment's run form. Shared parameters use :data:`SHARED_PARAMS`."""
    def wrap(fn: Callable) -> Callable:
        docs = {**SHARED_PARAMS, **params}
        names = list(inspect.signature(fn).parameters)
        missing = [n for n in names if n not in docs]
        if missing:
            raise TypeError(f"{fn.__name__}: no description for parameter(s) {missing}")
        args = "\n".join(f"    {n}: {docs[n]}" for n in names)
        module_doc = (inspect.getmodule(fn).__doc__ or fn.__name__).strip().splitlines()[0]
        fn.__doc__ = f"{inspect.cleandoc(fn.__doc__ or module_doc)}\n\nArgs:\n{args}\n"
        return fn
    return wrap


@functools.lru_cache(maxsize=None)
def overrides_model(config_cls: type[BaseModel]) -> type[BaseModel]:
    """A typed "change these fields" form of a config: every field optional (unset = the preset's value),
    same types and descriptions. Validation of ranges happens when the merged config is built."""
    fields = {}
    for name, f in config_cls.model_fields.items():
        desc = f"{f.description or name.replace('_', ' ')} (unset: the preset's value)"
        fields[name] = (Optional[f.annotation], Field(None, description=desc))
    return create_model(f"{config_cls.__name__}Overrides", __config__=ConfigDict(extra="forbid"),
                        __doc__=f"Fields of {config_cls.__name__} to change; unset ones keep the preset's value.",
                        **fields)


def _set_fields(model: BaseModel, prefix: str) -> dict[str, Any]:
    """Dotted keys of the fields set (and not None) in a form; nested forms recurse, so a nested field that was
    left unset keeps the preset's value instead of the nested class's default."""
    out: dict[str, Any] = {}
    for name in sorted(model.model_fields_set):
        v = getattr(model, name)
        if v is None:
            continue
        if isinstance(v, BaseModel):
            out.update(_set_fields(v, f"{prefix}.{name}"))
        elif isinstance(v, list):
            out[f"{prefix}.{name}"] = [x.model_dump() if isinstance(x, BaseModel) else x for x in v]
        else:
            out[f"{prefix}.{name}"] = v
    return out


def section_overrides(sections: Mapping[str, Any]) -> dict[str, Any]:
    """``{"pretrain": PretrainConfigOverrides(total_steps=9)}`` -> ``{"pretrain.total_steps": 9}`` (set fields only;
    a plain dict is taken as it is, one dotted key per entry)."""
    out: dict[str, Any] = {}
    for section, value in sections.items():
        if value is None:
            continue
        if isinstance(value, BaseModel):
            out.update(_set_fields(value, section))
        else:
            out.update({f"{section}.{k}": v for k, v in dict(value).items() if v is not None})
    return out


def build_config(
    config_cls: type[C],
    presets: Mapping[str, Callable[[], C]],
    preset: str = "tiny",
    overrides: list[str] | dict[str, Any] | None = None,
) -> C:
    """Preset + ``key=value`` overrides -> a validated config. Raises ConfigError with a one-line message."""
    if preset not in presets:
        raise ConfigError(f"unknown preset '{preset}'; choose one of: {', '.join(presets)}")
    data = presets[preset]().model_dump()
    items = overrides.items() if isinstance(overrides, dict) else []
    if isinstance(overrides, list):
        parsed = []
        for item in overrides:
            if "=" not in item:
                raise ConfigError(f"--set expects key=value, got '{item}'")
            k, v = item.split("=", 1)
            parsed.append((k.strip(), _parse_value(v)))
        items = parsed
    for k, v in items:
        _set_nested(data, k, v)
    try:
        return config_cls.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err)) from None


def describe_fields(config_cls: type[BaseModel], indent: str = "  ") -> str:
    out = []
    for name, field in config_cls.model_fields.items():
        ann = getattr(field.annotation, "__name__", str(field.annotation)).replace("typing.", "")
        default = field.default if field.default_factory is None else "(preset)"
        desc = f" - {field.description}" if field.description else ""
        out.append(f"{indent}{name}: {ann} = {default!r}{desc}")
        sub = field.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            out.append(describe_fields(sub, indent + "    "))
        elif isinstance(sub, type) and dataclasses.is_dataclass(sub):  # a models/ dataclass used as a section
            out += [f"{indent}    {f.name}: {getattr(f.type, '__name__', f.type)} = {f.default!r}"
                    for f in dataclasses.fields(sub)]
    return "\n".join(out)


def check_services(timeout_s: float = 5.0) -> None:
    """Fail within seconds, naming the address, when a configured MLflow or Prefect server does not answer."""
    import os
    import urllib.request

    from tasks.tracking import check_reachable

    check_reachable(timeout_s)
    api = os.environ.get("PREFECT_API_URL")
    if api:
        try:
            with urllib.request.urlopen(api.rstrip("/") + "/health", timeout=timeout_s):  # noqa: S310
                pass
        except OSError as err:
            raise ConnectionError(f"Prefect API at {api} is unreachable ({err}); start it (make servers-up) "
                                  "or unset PREFECT_API_URL to use the temporary local API") from None


class _OneLineErrors(logging.Filter):
    """Prefect logs a failing task or flow with its traceback (``exc_info``); on the terminal keep one line
    per record (the full traceback goes to ``<state>/logs/last-error.txt``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.name.startswith("prefect"):
            exc = record.exc_info[1]
            head = (record.getMessage().splitlines() or [""])[0]
            if exc is not None and str(exc) and str(exc) not in head:
                head = f"{head} ({type(exc).__name__}: {str(exc).splitlines()[0]})"
            record.msg, record.args, record.exc_info, record.exc_text = head, (), None, None
        return True


@contextlib.contextmanager
def _one_line_errors():
    """Install :class:`_OneLineErrors` on every handler of the prefect loggers and the root logger, unless
    ``SPACTOR_TRACEBACKS=1`` asks for the tracebacks."""
    if os.environ.get("SPACTOR_TRACEBACKS") == "1":
        yield
        return
    flt = _OneLineErrors()
    names = [n for n in logging.Logger.manager.loggerDict if n.startswith("prefect")]
    handlers = {h for n in names for h in logging.getLogger(n).handlers} | set(logging.getLogger().handlers)
    for h in handlers:
        h.addFilter(flt)
    try:
        yield
    finally:
        for h in handlers:
            h.removeFilter(flt)


def _route_logs_to_stdout() -> None:
    """Send the run's log lines (Prefect's, MLflow's, the root logger's) to stdout instead of stderr, so that at
    the default log level stderr carries nothing but the one ``error: ...`` line of a failed run. The log keeps
    every line (stdout); ``--debug`` leaves the handlers alone and prints tracebacks on stderr."""
    from tasks.tracking import log_stream  # imports mlflow, which configures its loggers: route them too

    stderrs = (sys.stderr, sys.__stderr__, log_stream())  # MLflow's stream forwards to sys.stderr
    names = [""] + [n for n in logging.Logger.manager.loggerDict if n.split(".")[0] in ("prefect", "mlflow", "ray")]
    for name in names:
        for h in getattr(logging.getLogger(name), "handlers", []):
            if isinstance(h, logging.StreamHandler) and any(getattr(h, "stream", None) is x for x in stderrs):
                h.setStream(sys.stdout)
                if getattr(h, "console", None) is not None:  # Prefect's rich console holds its own file
                    h.console.file = sys.stdout


def _save_traceback() -> str | None:
    """Write the current exception's traceback to ``<state>/logs/last-error.txt``; returns the path."""
    import traceback

    try:
        from tasks.runtime.env import state_dir

        path = state_dir() / "logs" / "last-error.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(traceback.format_exc())
        return str(path)
    except Exception:  # noqa: BLE001 - never hide the error itself
        return None


def run_cli(
    flow_fn: Callable[[C], Any],
    config_cls: type[C],
    presets: Mapping[str, Callable[[], C]],
    *,
    description: str,
    argv: list[str] | None = None,
) -> Any:
    parser = argparse.ArgumentParser(
        prog=f"python -m flows.{Path(sys.argv[0]).stem}" if sys.argv and sys.argv[0].endswith(".py") else None,
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="config fields (override with --set key=value; nested keys with dots):\n"
        + describe_fields(config_cls),
    )
    parser.add_argument("--preset", default="tiny", help=f"one of: {', '.join(presets)} (default: tiny)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field (value parsed as JSON, else a string)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("--debug", action="store_true",
                        help="print full tracebacks on stderr (default: one error line; the traceback goes to "
                             "<state>/logs/last-error.txt)")
    args = parser.parse_args(argv)
    if args.debug:
        os.environ["SPACTOR_TRACEBACKS"] = "1"
    if os.environ.get("SPACTOR_TRACEBACKS") != "1":
        _route_logs_to_stdout()
    try:
        config = build_config(config_cls, presets, args.preset, args.overrides)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2)
    if args.print_config:
        print(config.model_dump_json(indent=2))
        return None
    try:
        check_services()
        with _one_line_errors():
            result = flow_fn(config)
    except (*USER_ERRORS, RunLockedError) as err:
        # user errors raised by our own checks (and a run already in progress): one line, no traceback wall
        _save_traceback()  # <state>/logs/last-error.txt; --debug prints it instead
        print(f"error: {err or type(err).__name__}", file=sys.stderr)
        raise SystemExit(2)
    summary = getattr(result, "summary", None)
    if callable(summary):
        print(summary())
    elif result is not None:
        print(result)
    return result


def run_footer(run_id: str, *, model_uri: str | None = None, files: str = "") -> str:
    """The last lines of every flow summary: the registered model (if any), the MLflow run id and where
    its artifacts are (``files`` names the notable ones)."""
    from tasks.tracking import artifact_local_path

    model = f"registered model: {model_uri}\n" if model_uri else ""
    return f"{model}MLflow run id: {run_id}\nartifacts: {artifact_local_path(run_id)}{f' ({files})' if files else ''}"


def named_subflow(stage_flow, name: str) -> Callable[..., Any]:
    """The stage's subflow with its Prefect run and its MLflow run both named ``name`` (``pretrain-teacher``,
    ``distill-draft``, ``sd-benchmark``...), so both UIs' trees read without opening runs."""
    named = stage_flow.with_options(flow_run_name=name)
    return lambda **kwargs: named(run_name=name, **kwargs)


def records(df) -> list[dict[str, Any]]:
    """A results DataFrame as JSON-safe records (missing values -> None), for a pipeline's stage record."""
    return json.loads(df.to_json(orient="records"))
