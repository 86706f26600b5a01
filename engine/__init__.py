"""The runtime layer, between ``tasks/`` (Prefect tasks, MLflow) and ``models/`` (pure maths).

It owns what runs on a worker or in a timing script: the training loop (``train_loop``), checkpoints
(``checkpoints``), object storage (``storage``) and sharded packed rows streamed from it (``shards``), the
three objectives' workers (``pretrain_worker``, ``finetune_worker``,
``distill_worker``) and the speculative-decoding latency harness (``sd_bench``). It imports neither Prefect
nor MLflow: metrics leave the loop through a sink the caller passes, so everything here also runs from a
plain script (``benchmarks/``, the GPU machine).
"""
