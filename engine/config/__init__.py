"""The config room: every run's typed config and its presets, one module per flow, below ``flows/`` so that tasks,
the engine and the benchmarks share them.

One pydantic model per run kind, strict (``extra="forbid"``, no inf/NaN, assignments validated, in
:mod:`engine.config.base`), and its presets as plain functions (``tiny``, ``laptop``, ``llm``, ``small``,
``base``) collected in the module's ``PRESETS``. The flows add only their command line and wiring. A training
config becomes the typed job its workers run with :meth:`engine.jobs.Job.of`, once, on the driver.

    base          FlowConfig, TrainRunFields, optimiser_section, T5Shape
    paths         LocalPath, FolderOrS3, ModelRef (validators that make paths absolute)
    task          TaskSpec (which downstream task)
    corpus_prep, pretrain, finetune, distill, evaluate, import_model, sd_benchmark
    pipeline, llm_pipeline, spactor_vs_sc, distillspec_study, active_learning, al_study

These modules need pydantic; the bare GPU machine of ``benchmarks/device_check.sh`` has none, so nothing on
the device path imports them (the jobs there are built from plain dicts).
"""
