"""Path-valued config fields, made absolute where the config is validated (the command's working directory).

Ray Train changes each worker's working directory and its controller refuses a relative storage path, so a
relative ``corpus_dir``, ``output_root`` or model folder must never reach a worker as it was typed.
"""

from __future__ import annotations

import os
from typing import Annotated, Optional

from pydantic import AfterValidator


def absolute_path(value: Optional[str]) -> Optional[str]:
    """``~`` expanded and made absolute (globs keep their wildcards); None stays None."""
    return None if value is None else os.path.abspath(os.path.expanduser(value))


def model_reference(value: Optional[str]) -> Optional[str]:
    """A local model folder made absolute, and a ``gguf:PATH`` file's path too; ``models:/``, ``runs:/`` and
    ``scheme://`` URIs, packaged names (``smollm2``) and Hugging Face hub names (``hf:org/name``, or ``org/name``
    that is not a local folder) are kept as they are."""
    if value is None or "://" in value or value.startswith(("models:/", "runs:/", "hf:")):
        return value
    if value.startswith("gguf:"):  # a GGUF file: its path made absolute like any other
        return "gguf:" + os.path.abspath(os.path.expanduser(value[len("gguf:"):]))
    path = os.path.expanduser(value)
    if os.path.isabs(path) or value.startswith((".", "~")) or os.path.exists(path):
        return os.path.abspath(path)
    return value


def folder_or_s3(value: Optional[str]) -> Optional[str]:
    """A local folder made absolute, or an ``s3://bucket/prefix`` URI kept as it is (a published folder)."""
    if value is None or not ("://" in value):
        return absolute_path(value)
    if not value.startswith("s3://") or not value[5:].strip("/").count("/"):
        raise ValueError(f"{value!r}: use a local folder or s3://bucket/prefix")
    return value.rstrip("/")


LocalPath = Annotated[str, AfterValidator(absolute_path)]
FolderOrS3 = Annotated[str, AfterValidator(folder_or_s3)]
ModelRef = Annotated[str, AfterValidator(model_reference)]
