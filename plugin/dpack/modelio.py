"""Model files: one ``torch.save`` dict of plain values and tensors, loaded with ``weights_only=True``
(nothing in a model file is ever executed), with a format name and version; shared by the prefix model
and the flow-record models."""

from __future__ import annotations

import io
import math
import os
import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

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
    if not zipfile.is_zipfile(p):  # torch.save writes a zip archive; anything else is not a model file
        raise ModelError(
            f"{path}: not a readable dpack model (not a PyTorch model archive: damaged or another file)"
        )
    try:
        blob = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # weights_only=True refused an object a model file never holds; nothing was run. (Torch's own
        # message advises weights_only=False: never for a file of unknown origin.)
        raise ModelError(
            f"{path}: not a readable dpack model (it holds Python objects a dpack model never holds; "
            "refused without running them)"
        ) from None
    except Exception as err:  # noqa: BLE001 - torch.load of hostile bytes raises almost anything
        # (RuntimeError, struct.error, KeyError, IndexError, ...); none may escape as a traceback
        raise ModelError(
            f"{path}: not a readable dpack model (damaged archive: {type(err).__name__})"
        ) from None
    if not isinstance(blob, dict) or blob.get("format") != fmt:
        raise ModelError(f"{path}: not a {what} file")
    if blob.get("format_version") != version:
        raise ModelError(
            f"{path}: {what} format version {blob.get('format_version')} is not supported "
            f"(this dpack reads {version})"
        )
    return blob


# The largest network dpack builds from a file (parameters); the paper CNN at N=3, L=80 has ~20M.
MAX_PARAMETERS = 64_000_000


M = TypeVar("M", bound=nn.Module)


def build_checked(
    make: Callable[[], M], state: Any, path: str | os.PathLike[str], what: str = "dpack model"
) -> M:
    """The network ``make`` builds, with ``state`` loaded, after checking - before any memory is taken
    for it - that the file's tensors are exactly the ones the declared network has (built first on
    PyTorch's ``meta`` device, which allocates nothing), that it is not larger than ``MAX_PARAMETERS``,
    and that every weight is finite (a NaN would make every score NaN, and NaN flags nothing)."""
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in make().state_dict().items()}
    n = sum(math.prod(s) for s in shapes.values())
    if n > MAX_PARAMETERS:
        raise ModelError(f"{path}: the declared network has {n:,} parameters, more than {MAX_PARAMETERS:,}")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"{path}: damaged {what} (weights are not a dict of tensors)")
    got = {k: tuple(v.shape) for k, v in state.items()}
    if got != shapes:
        raise ModelError(f"{path}: damaged {what} (its weights do not fit the declared network)")
    for k, v in state.items():
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise ModelError(f"{path}: damaged {what} ({k} holds NaN or infinite values)")
    net = make()
    net.load_state_dict(state)
    return net


def finite_threshold(value: Any, path: str | os.PathLike[str], what: str = "dpack model") -> float:
    """A model's threshold: a finite positive number (NaN or infinity would silently flag nothing, zero
    or less everything)."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ModelError(f"{path}: damaged {what} (threshold is not a number)")
    t = float(value)
    if not (math.isfinite(t) and t > 0):
        raise ModelError(f"{path}: damaged {what} (threshold {t!r} is not a finite positive number)")
    return t
