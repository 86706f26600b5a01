"""Path-valued config fields: they live in :mod:`engine.paths` (the configs below ``flows/`` use them too)."""

from engine.paths import LocalPath, ModelRef, absolute_path, model_reference  # noqa: F401 - public names

__all__ = ["LocalPath", "ModelRef", "absolute_path", "model_reference"]
