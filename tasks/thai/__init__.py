"""The second product: live active learning for Thai word segmentation (``active_learning``: its Prefect tasks;
``al_loop``: the round loop the flow runs; ``annotators``: simulated and human annotators; ``data``: ORCHID and
pool loading; ``segment``: segmenting files with a trained model)."""
