"""The model file: one ``torch.save`` dict of plain values and tensors, loaded with ``weights_only=True``.

Contents: ``format``/``format_version``, ``config`` (rebuilds the network), ``prefix`` (N, L, policy,
masking), ``state_dict``, ``threshold`` and how it was chosen, ``score_stats`` on the calibration flows,
``classes`` (profile class names) and ``provenance`` (training files and their SHA-256, flow counts, dpack
version, date). Files are written to a temporary name and renamed over the target, so a reader never sees
half a model.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ModelError
from ..fileio import sha256_file
from ..modelio import build_checked, finite_threshold, load_blob, save_blob
from ..traffic.encode import PrefixSpec
from .model import DPackNet, ModelConfig

if TYPE_CHECKING:
    from ..context.stage import ContextModel

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
    context: ContextModel | None = None  # the host-context stage, when the file has one

    @property
    def learned_from(self) -> str:
        """Where the model learned benign traffic: its site (learning mode) or its captures' names."""
        prov = self.meta.get("provenance") or {}
        if isinstance(prov, dict):
            if prov.get("site"):
                return f"site {prov['site']}"
            files = prov.get("files") or prov.get("captures") or []
            names = [str(f.get("name")) for f in files if isinstance(f, dict) and f.get("name")]
            if names:
                return (
                    "captures " + ", ".join(names[:3]) + (f" (+{len(names) - 3})" if len(names) > 3 else "")
                )
        return "unknown (no provenance)"

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


def load_model(path: str | os.PathLike[str], expect: PrefixSpec | None = None) -> LoadedModel:
    """Load and check a model file; ``expect`` is the configured export, refused if it differs."""
    p = Path(path)
    blob = load_blob(p, FORMAT, FORMAT_VERSION, "dpack model")
    try:
        cfg = ModelConfig(**blob["config"])
        # files from before max_wait existed read flows without a time limit
        spec = PrefixSpec(**{"max_wait": math.inf, **blob["prefix"]})
        net = build_checked(lambda: DPackNet(cfg), blob["state_dict"], p)
        threshold = finite_threshold(blob["threshold"], p)
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
    context = None
    if blob.get("context") is not None:
        from ..context.stage import ContextModel

        context = ContextModel.from_blob(blob["context"], str(p))
        fitted = context.provenance.get("prefix_threshold")
        if fitted is not None and not math.isclose(float(fitted), threshold, rel_tol=1e-6):
            raise ModelError(f"{path}: the context stage was fitted with another prefix threshold; refit it")
    meta = {k: v for k, v in blob.items() if k not in ("state_dict", "context")}
    return LoadedModel(net, spec, threshold, meta, str(p), sha256_file(p), context)
