"""The model file: one ``torch.save`` dict of plain values and tensors, loaded with ``weights_only=True``.

Contents: ``format``/``format_version``, ``config`` (rebuilds the network), ``prefix`` (N, L, policy,
masking), ``state_dict``, ``threshold`` and how it was chosen, ``score_stats`` on the calibration flows,
``classes`` (profile class names) and ``provenance`` (training files and their SHA-256, flow counts, dpack
version, date). Files are written to a temporary name and renamed over the target, so a reader never sees
half a model.
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import ModelError
from ..fileio import atomic_write_bytes, sha256_file
from ..traffic.encode import PrefixSpec
from .model import DPackNet, ModelConfig

FORMAT = "dpack-model"
FORMAT_VERSION = 1


@dataclass
class LoadedModel:
    net: DPackNet
    spec: PrefixSpec
    threshold: float
    meta: dict[str, Any]
    path: str
    sha256: str

    @property
    def name(self) -> str:
        """Short name for verdicts and rules: the stored name and the first 12 hex digits of the file hash."""
        return f"{self.meta.get('name', Path(self.path).stem)}@{self.sha256[:12]}"


def save_model(path: str | os.PathLike[str], net: DPackNet, spec: PrefixSpec, **meta: Any) -> None:
    blob = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": net.cfg.as_dict(),
        "prefix": spec.as_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()},
        **meta,
    }
    save_blob(path, blob)


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


def load_model(path: str | os.PathLike[str], expect: PrefixSpec | None = None) -> LoadedModel:
    """Load and check a model file; ``expect`` is the configured export, refused if it differs."""
    p = Path(path)
    blob = load_blob(p, FORMAT, FORMAT_VERSION, "dpack model")
    try:
        cfg = ModelConfig(**blob["config"])
        # files from before max_wait existed read flows without a time limit
        spec = PrefixSpec(**{"max_wait": math.inf, **blob["prefix"]})
        net = DPackNet(cfg)
        net.load_state_dict(blob["state_dict"])
        threshold = float(blob["threshold"])
    except (KeyError, TypeError, ValueError, RuntimeError, AssertionError) as err:
        raise ModelError(f"{path}: damaged dpack model ({str(err).splitlines()[0][:160]})") from None
    if (spec.n_packets, spec.n_bytes) != (cfg.n_packets, cfg.n_bytes):
        raise ModelError(f"{path}: damaged dpack model (prefix and network disagree)")
    if expect is not None and expect != spec:
        raise ModelError(
            f"{path}: model expects {spec.describe()} masking={spec.masking}, but the export is "
            f"configured as {expect.describe()} masking={expect.masking}"
        )
    net.eval()
    meta = {k: v for k, v in blob.items() if k not in ("state_dict",)}
    return LoadedModel(net, spec, threshold, meta, str(p), sha256_file(p))
