"""Prefect task: SpacTor / SC pretraining on Ray Train workers, tracked in MLflow, model registered.

Resume, the run key and the MLflow bookkeeping of a killed attempt are :mod:`tasks.runtime.tracked_run`'s.
"""

from __future__ import annotations

from typing import Any

from prefect import task

from engine.config.pretrain import PretrainConfig
from tasks import tracking
from tasks.runtime.tracked_run import resumable_run


def curve_table(evals: list[dict]):
    import pandas as pd

    return pd.DataFrame(evals)


@task(name="pretrain")
def pretrain(cfg: PretrainConfig, corpus_dir: str, *, parent_run_id: str | None = None,
             experiment: str = "pretrain", run_name: str | None = None) -> dict[str, Any]:
    from engine.pretrain_worker import pretrain_worker
    from tasks.corpus import check_corpus_dir

    # one line on the driver, not a worker traceback retried by Ray
    check_corpus_dir(corpus_dir, shards=cfg.stream_shards)
    arm = "sc" if cfg.tau == 0 else "spactor"
    tags = {"stage": "pretrain", "arm": arm, "preset": cfg.preset, "tau": cfg.tau, "corpus.path": corpus_dir}
    inputs = {"corpus_dir": corpus_dir, "tokenizer_dir": f"{str(corpus_dir).rstrip('/')}/tokenizer"}  # or s3://
    with resumable_run("pretrain", cfg, inputs, worker=pretrain_worker, experiment=experiment,
                       run_name=run_name or f"{cfg.preset}-{arm}", tags=tags, parent_run_id=parent_run_id,
                       describe=f"training {arm} arm (tau={cfg.tau} of {cfg.total_steps} steps)") as run:
        state = run.state
        tracking.log_table(run.run_id, curve_table(state["evals"]), "curve.csv")
        tracking.log_artifact(run.run_id, run.final / "trainer_state.json")
        tracking.log_metrics(run.run_id, {"final_cum_flops": state["cum_flops"],
                                          "final_val_sc_loss": state["evals"][-1]["val_sc_loss"] if state["evals"]
                                          else float("nan")})
        model_uri = tracking.register_model(
            run.run_id, run.model_dir, cfg.register_as or f"t5-{cfg.preset}-{arm}",
            tags={"preset": cfg.preset, "arm": arm, "tau": cfg.tau, "stage": "pretrain",
                  "corpus": corpus_dir, "mlflow_run_id": run.run_id},
            description=_describe(cfg, arm, state),
            metrics={"final_val_sc_loss": state["evals"][-1]["val_sc_loss"]} if state["evals"] else None)
    return {"run_id": run.run_id, "model_uri": model_uri, "model_dir": str(run.model_dir), "arm": arm,
            "evals": state["evals"], "cum_flops": state["cum_flops"]}


def _describe(cfg: PretrainConfig, arm: str, state: dict[str, Any]) -> str:
    """The registered version's description: what it is, how it was trained, its headline number."""
    m = cfg.model
    shape = f"d_model {m.d_model}, {m.num_layers}+{m.num_decoder_layers} layers"
    how = (f"SpacTor (span corruption + replaced-token detection for tau={cfg.tau} steps, then span corruption)"
           if arm == "spactor" else "span corruption only")
    loss = f"; final validation SC loss {state['evals'][-1]['val_sc_loss']:.4f}" if state["evals"] else ""
    return (f"T5 ({shape}) pretrained with {how} for {state['step']} steps of {cfg.batch_size} x "
            f"{cfg.inputs_length} tokens ({cfg.preset} preset){loss}.")
