"""Import a decoder-only LM (a packaged name, a gguf: file, a hub id or a folder) into the model registry once,
so that later stages take it as ``models:/NAME/VERSION`` like every model the pipeline trains."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from prefect import task

from tasks import tracking


@task(name="import-model")
def import_model(ref: str, name: str, *, experiment: str = "import", parent_run_id: str | None = None,
                 run_name: str | None = None) -> dict[str, Any]:
    """Load ``ref`` (``engine.causal_lm.load_causal_lm``), save it with ``save_pretrained`` (safetensors, fp32)
    and its tokenizer, and register it as ``name`` with its source, licence and shape in the tags (and the
    sha256 tags every version has). Returns the run id and the ``models:/`` URI."""
    from engine.causal_lm import PACKAGED, load_causal_lm

    model, tokenizer = load_causal_lm(ref)
    c = model.config
    licence = PACKAGED[ref][2] if ref in PACKAGED else "see the source"
    tags = {"stage": "import", "source": ref, "licence": licence, "architecture": type(model).__name__,
            "layers": c.num_hidden_layers, "d_model": c.hidden_size, "vocab_size": c.vocab_size}
    params = sum(p.numel() for p in model.parameters())
    with tracking.start_run(experiment, run_name or f"import-{name}", params={"ref": ref, "name": name},
                            tags=tags, parent_run_id=parent_run_id) as run_id, \
            tempfile.TemporaryDirectory(prefix="import-") as tmp:
        folder = Path(tmp) / "model"
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        tracking.log_metrics(run_id, {"parameters": float(params)})
        uri = tracking.register_model(run_id, folder, name, tags=tags,
                                      description=f"{type(model).__name__} of {params / 1e6:.0f}M parameters "
                                                  f"({c.num_hidden_layers} layers, d_model {c.hidden_size}, "
                                                  f"vocabulary {c.vocab_size}) imported from {ref} "
                                                  f"(licence: {licence}).")
    return {"run_id": run_id, "model_uri": uri}


@task(name="make-draft")
def make_draft(target_dir: str, name: str, *, target_ref: str, layers: int, init: str, sizes: dict[str, int] | None = None,
               head_tokens: int = 0, task_dir: str | None = None, seed: int = 0, experiment: str = "import",
               parent_run_id: str | None = None, run_name: str | None = None) -> dict[str, Any]:
    """Build a draft for the decoder-only model in ``target_dir`` (``models.sd.drafts.make_causal_draft``:
    its first ``layers`` layers, or a fresh model of ``sizes`` seeded by ``seed``), save it with the target's
    tokenizer and register it as ``name`` with its lineage. ``head_tokens`` > 0: a frequent-token head (FR-Spec)
    over the ids most frequent in the training split of ``task_dir`` (inputs and targets). Returns the run id and
    the ``models:/`` URI."""
    import torch

    from engine.finetune_worker import load_model_and_tokenizer
    from models.sd.drafts import head_share, make_causal_draft, task_frequent_token_ids

    target, tokenizer = load_model_and_tokenizer(target_dir)
    head = None
    if head_tokens:
        import datasets

        if task_dir is None:
            raise ValueError("head_tokens needs task_dir: the frequent tokens are counted on its training split")
        head = task_frequent_token_ids(tokenizer, datasets.load_from_disk(str(Path(task_dir) / "data"))["train"],
                                       head_tokens)
    draft = make_causal_draft(target, layers=layers, init=init, generator=torch.Generator().manual_seed(seed),
                              head_tokens=head, **(sizes or {}))
    c = draft.config
    params = sum(p.numel() for p in draft.parameters())
    tags = {"stage": "draft_init", "lineage.target": target_ref, "init": init, "layers": layers,
            "d_model": c.hidden_size, "architecture": type(draft).__name__, "head_tokens": head_tokens or "all"}
    with tracking.start_run(experiment, run_name or f"draft-{name}", params={"layers": layers, "init": init,
                                                                             "seed": seed, **(sizes or {})},
                            tags=tags, parent_run_id=parent_run_id) as run_id, \
            tempfile.TemporaryDirectory(prefix="draft-") as tmp:
        folder = Path(tmp) / "model"
        draft.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        tracking.log_metrics(run_id, {"parameters": float(params), "head_share": head_share(draft)})
        how = (f"its first {layers} layers, embeddings and head copied" if init == "target"
               else f"fresh, width {c.hidden_size}, seed {seed}")
        if head_tokens:
            how += f"; head over its {head_tokens} most frequent tokens"
        uri = tracking.register_model(run_id, folder, name, tags=tags,
                                      description=f"undistilled draft of {params / 1e6:.0f}M parameters for "
                                                  f"{target_ref} ({how}).")
    return {"run_id": run_id, "model_uri": uri}
