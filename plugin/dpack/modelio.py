"""Model files: one ``torch.save`` dict of plain values and tensors, loaded with ``weights_only=True``
(nothing in a model file is ever executed), with a format name and version; shared by the prefix model
and the flow-record models."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import torch

from .errors import ModelError
from .fileio import atomic_write_bytes


def save_blob(path: str | os.PathLike[str], blob: dict[str, Any]) -> None:
    """``torch.save`` a dict of plain values and tensors, atomically."""
    buf = io.BytesIO()
    torch.save(blob, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_blob(path: str | os.PathLike[str], fmt: str, version: int, what: str) -> dict[str, Any]:
    """Read a model file's dict (``weights_only=True``) and check its format name and version."""
    p = Path(path)
    if not p.is_file():
        raise ModelError(f"{path}: no such model file")
    try:
        blob = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch.load of hostile bytes raises almost anything
        # (UnpicklingError, RuntimeError, struct.error, KeyError, IndexError, ...); none may escape as a
        # traceback, and weights_only=True means nothing was executed.
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelError(f"{path}: not a readable dpack model ({first[:160]})") from None
    if not isinstance(blob, dict) or blob.get("format") != fmt:
        raise ModelError(f"{path}: not a {what} file")
    if blob.get("format_version") != version:
        raise ModelError(
            f"{path}: {what} format version {blob.get('format_version')} is not supported "
            f"(this dpack reads {version})"
        )
    return blob
