"""The flow-record detectors as commands: training from captures and the side-by-side evaluation with
D-PACK. ``dpack train --detector records|classifier`` and ``dpack evaluate --records-model`` call these
(``scorer.py`` runs them live).

Detectors (``detectors:`` in the config):
  * ``prefix``: D-PACK on the first packets (``model``), early; the default.
  * ``records``: the flow-record autoencoder (``recordae.py``), late (at connection end), unsupervised.
  * ``classifier``: the CNN-BiLSTM (``classifier.py``), supervised; names the category of a connection.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .. import __version__
from ..fileio import sha256_file
from .classifier import (
    FitOptions,
    fit_record_classifier,
    save_record_classifier,
)
from .features import (
    labelled_records,
    record_key,
    record_table,
    records_from_capture,
)
from .recordae import RecordAEOptions, RecordDetector, fit_record_ae, save_record_model
from .scorer import uses_segments


def _provenance(paths: Sequence[str | os.PathLike[str]]) -> dict[str, Any]:
    return {
        "files": [{"name": Path(p).name, "sha256": sha256_file(p)} for p in paths],
        "dpack_version": __version__,
    }


def train_records(
    captures: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    opts: RecordAEOptions,
    segments: bool = True,
    cmd_target: Sequence[str | os.PathLike[str]] = (),
    name: str = "",
    progress: Callable[[str], Any] | None = None,
) -> RecordDetector:
    """Flow-record autoencoder from benign captures; ``cmd_target`` captures (unlabeled deployment
    traffic) are only used for the CMD penalty when ``opts.cmd_weight > 0``."""
    recs = [r for c in captures for r in records_from_capture(c)]
    benign = record_table(recs, segments=segments)
    target = None
    if cmd_target:
        target = record_table([r for c in cmd_target for r in records_from_capture(c)], segments=segments)
    det = fit_record_ae(benign, opts, target, progress)
    det.meta["name"] = name or f"records-ae{'-seg' if segments else ''}"
    prov = _provenance(captures)
    prov["cmd_target"] = _provenance(cmd_target)["files"] if cmd_target else []
    save_record_model(out, det, provenance=prov)
    return det


def train_classifier(
    captures: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    opts: FitOptions,
    segments: bool = True,
    name: str = "",
    progress: Callable[[str], Any] | None = None,
) -> dict[str, int]:
    """CNN-BiLSTM from labelled captures (a lab-dev style ``NAME.labels.csv`` beside each); the classes
    are ``benign`` and the attack families found in the labels."""
    lr = labelled_records(captures)
    y, names = lr.classes()
    t = record_table(lr.records, y, names, segments=segments)
    clf = fit_record_classifier(t, opts, progress)
    clf.meta["name"] = name or "classifier-cnn-bilstm"
    save_record_classifier(out, clf, provenance=_provenance(captures))
    return clf.meta["class_counts"]


def side_by_side(
    captures: Sequence[str | os.PathLike[str]],
    det: RecordDetector,
    prefix_flags: dict[tuple[Any, ...], bool],
    labels_csv: Sequence[str | os.PathLike[str]] = (),
) -> dict[str, dict[str, float]]:
    """Per family: share flagged by the record autoencoder and by D-PACK (``prefix_flags``: label key ->
    flagged) on the same flows (those both detectors saw and the labels name)."""
    lr = labelled_records(captures, labels_csv)
    t = record_table(lr.records, segments=uses_segments(det.encoder))
    flags = det.scores(t) > det.threshold
    fam_of = {record_key(r): f for r, f in zip(lr.records, lr.family, strict=True)}
    out: dict[str, dict[str, float]] = {}
    for r, flag in zip(t.extra["records"], flags, strict=True):
        key = record_key(r)
        if key not in prefix_flags:
            continue
        e = out.setdefault(fam_of[key], {"flows": 0, "records_ae": 0, "dpack": 0, "either": 0})
        e["flows"] += 1
        e["records_ae"] += int(flag)
        e["dpack"] += int(prefix_flags[key])
        e["either"] += int(flag or prefix_flags[key])
    return dict(sorted(out.items()))


def format_side_by_side(rows: dict[str, dict[str, float]], attack: set[str]) -> str:
    lines = [f"{'family':<24} {'kind':<7} {'flows':>7} {'dpack':>8} {'records-ae':>11} {'either':>8}"]
    for fam, e in rows.items():
        n = max(1, e["flows"])
        lines.append(
            f"{fam:<24} {'attack' if fam in attack else 'benign':<7} {e['flows']:>7} "
            f"{e['dpack'] / n:>8.2%} {e['records_ae'] / n:>11.2%} {e['either'] / n:>8.2%}"
        )
    for kind, what in (("benign", "false positive rate"), ("attack", "detection rate")):
        sel = [e for f, e in rows.items() if (f in attack) == (kind == "attack")]
        n = max(1, sum(e["flows"] for e in sel))
        lines.append(
            f"{'all ' + kind:<24} {what[:7]:<7} {n:>7} {sum(e['dpack'] for e in sel) / n:>8.2%} "
            f"{sum(e['records_ae'] for e in sel) / n:>11.2%} {sum(e['either'] for e in sel) / n:>8.2%}"
        )
    return "\n".join(lines)
