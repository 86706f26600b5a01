"""How the tasks run, not what they compute: the Ray Train adapter (``ray_train``), the resumable tracked training
run (``tracked_run``), stage keys and reuse (``stages``, ``pipeline_stages``), the Prefect helpers and retry rules
(``orchestration``) and the embedded service defaults (``env``). The MLflow adapter is ``tasks.tracking``."""
