"""Labels of flows in the lab-dev format: one CSV row per flow, keyed by the initiator's 5-tuple and its
first packet's timestamp (``ts_first``, to the microsecond); ``NAME.labels.csv`` beside a capture."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

from ..errors import LabelsError, one_line
from ..fileio import open_regular
from .flows import FlowSample

LabelKey = tuple[str, str, str, int, str, int]
LABEL_COLUMNS = ("ts_first", "proto", "src", "sport", "dst", "dport", "label", "family")


def sample_key(s: FlowSample) -> LabelKey:
    return (f"{s.ts:.6f}", s.proto_name, s.src, s.sport, s.dst, s.dport)


def read_labels(path: str | os.PathLike[str]) -> dict[LabelKey, tuple[bool, str]]:
    """``key -> (is_attack, family)`` from a lab-dev style labels CSV."""
    out: dict[LabelKey, tuple[bool, str]] = {}
    raw = open_regular(path, "labels file", LabelsError)
    try:
        with io.TextIOWrapper(raw, encoding="utf-8-sig", newline="") as fh:  # -sig: spreadsheets write a BOM
            reader = csv.DictReader(fh)
            missing = [c for c in LABEL_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise LabelsError(f"{path}: labels CSV lacks column(s) {', '.join(missing)}")
            for lineno, row in enumerate(reader, start=2):
                if None in row or any(row.get(c) is None for c in LABEL_COLUMNS):
                    raise LabelsError(f"{path}:{lineno}: expected {len(reader.fieldnames or [])} fields")
                try:
                    key = (
                        row["ts_first"],
                        row["proto"],
                        row["src"],
                        int(row["sport"]),
                        row["dst"],
                        int(row["dport"]),
                    )
                except (TypeError, ValueError):
                    raise LabelsError(f"{path}:{lineno}: bad port value") from None
                label = row["label"].strip().lower()
                if label not in ("benign", "attack"):
                    raise LabelsError(
                        f"{path}:{lineno}: label must be benign or attack, got {one_line(row['label'], 40)!r}"
                    )
                out[key] = (label == "attack", row["family"] or label)
    except UnicodeDecodeError:
        raise LabelsError(f"{path}: not a text CSV file") from None
    except csv.Error as err:
        raise LabelsError(f"{path}: not a valid CSV file ({one_line(str(err))[:80]})") from None
    return out


def labels_beside(capture: str | os.PathLike[str]) -> Path | None:
    p = Path(capture)
    stem = p.name
    for suffix in (".gz", ".pcapng", ".pcap"):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
    cand = p.with_name(stem + ".labels.csv")
    return cand if cand.is_file() else None
