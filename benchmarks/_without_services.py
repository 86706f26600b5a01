"""Run a benchmark script as on the bare GPU machine: Prefect, Ray, MLflow, datasets, pandas, pyarrow,
pydantic, rouge_score and sentencepiece cannot be imported (``import`` raises ImportError), so a script
that needs them fails here too.

    python benchmarks/_without_services.py benchmarks/sd_engine.py --help
"""

import runpy
import sys

UNAVAILABLE = ("prefect", "ray", "mlflow", "datasets", "pandas", "pyarrow", "pydantic", "rouge_score", "sentencepiece")

if __name__ == "__main__":
    for name in UNAVAILABLE:
        sys.modules[name] = None  # import -> ImportError, as on the bare GPU machine
    script, *rest = sys.argv[1:]
    sys.argv = [script, *rest]
    runpy.run_path(script, run_name="__main__")
