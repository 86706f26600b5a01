"""Prefect flows. Importing this package applies the embedded defaults (see tasks/env.py) first."""

from tasks.env import apply_embedded_defaults

apply_embedded_defaults()
