"""Path-valued config fields: they live in :mod:`engine.paths` (the configs below ``flows/`` use them too)."""

from engine.paths import (FolderOrS3, LocalPath, ModelRef, absolute_path, folder_or_s3,  # noqa: F401 - public names
                          model_reference)

__all__ = ["FolderOrS3", "LocalPath", "ModelRef", "absolute_path", "folder_or_s3", "model_reference"]
