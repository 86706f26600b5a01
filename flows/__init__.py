"""Prefect flows. Importing this package applies the embedded defaults (see tasks/runtime/env.py) first, then checks
the environment: a setting that cannot work stops here, before Prefect, MLflow or any work starts (one
``error:`` line and exit 2 for ``python -m flows.<name>``; an OSError naming the variable for an import)."""

import sys

from tasks.runtime.env import apply_embedded_defaults, environment_problems

apply_embedded_defaults()
_problems = environment_problems()
if _problems:
    if sys.argv[:1] == ["-m"]:  # python -m flows.<name>: the package is imported while the module is found
        print(f"error: {_problems[0]}", file=sys.stderr)
        raise SystemExit(2)
    raise OSError(_problems[0])
