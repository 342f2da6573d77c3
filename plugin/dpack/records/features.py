"""Connection records as model input: from a capture (offline, the engine's flow table with
``records=True``) or from Zeek (live, ``DPack::connection_summary``), into one ``Table`` layout.

Features of one record (``record_table``):
  * numeric: duration, packets and payload/IP bytes per direction (7), the history letters as 12 0/1
    flags (``conn.HISTORY_LETTERS``), and, with ``segments=True``, 4 segment features (below);
  * categorical: proto, service, conn_state. ``service`` is derived from the protocol and responder port
    (``profiles.py`` service groups) on both paths, not Zeek's DPD result: a scan's failed attempt has no
    DPD service, and offline there is none at all, so a port-derived service is what both paths share.

Segments (shift-robust features): per (source /24, target /24) pair (IPv6: /64), records less than
``gap`` seconds apart form a segment. Each record gets the segment's length so far (records), and the
number of distinct target addresses, target ports and services seen in it so far. They are causal (a
live scorer can compute them from what it has seen) and expose sweeps: a port scan is one long segment
with many ports, a user's browsing a short one with few.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..traffic.capture import CaptureStats, read_capture
from ..traffic.conn import HISTORY_LETTERS, ConnRecord
from ..traffic.encode import PrefixSpec
from ..traffic.flows import FlowRules, FlowTable
from ..traffic.labels import read_labels
from ..traffic.packets import PROTO_ICMP, PROTO_ICMP6, PROTO_TCP, PROTO_UDP
from ..traffic.profiles import CLASS_NAMES, profile_class
from .tables import Table

PROTO_NUMBERS = {"tcp": PROTO_TCP, "udp": PROTO_UDP, "icmp": PROTO_ICMP, "icmp6": PROTO_ICMP6}
BASE_NUMERIC = [
    "duration",
    "orig_pkts",
    "resp_pkts",
    "orig_bytes",
    "resp_bytes",
    "orig_ip_bytes",
    "resp_ip_bytes",
]
HISTORY_NUMERIC = [f"history_{'o' if c.isupper() else 'r'}{c.lower()}" for c in HISTORY_LETTERS]
SEGMENT_NUMERIC = ["seg_flows", "seg_dst_addrs", "seg_dst_ports", "seg_services"]
SEGMENT_GAP = 60.0


def service_of(proto: str, dport: int) -> str:
    """Port-derived service group of a record (the same groups the D-PACK profiler learns)."""
    return CLASS_NAMES[profile_class(PROTO_NUMBERS.get(proto, 0), dport)]


def prefix_of(addr: str, v4: int = 24, v6: int = 64) -> str:
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return "?"
    return str(ipaddress.ip_network(f"{ip}/{v4 if ip.version == 4 else v6}", strict=False))


def group_keys(records: Sequence[ConnRecord], v4: int = 24) -> np.ndarray:
    """(R,) "source-prefix>target-prefix" keys for group-based splitting."""
    return np.asarray([f"{prefix_of(r.src, v4)}>{prefix_of(r.dst, v4)}" for r in records])


@dataclass
class SegmentState:
    """Causal segment tracker; ``update`` returns the 4 segment features of the next record."""

    gap: float = SEGMENT_GAP
    prefix: int = 24
    max_pairs: int = 100_000  # bound the state a live scorer keeps (oldest pairs are forgotten)
    _seg: dict[str, tuple[float, int, set[str], set[int], set[str]]] = field(default_factory=dict)

    def update(self, r: ConnRecord) -> list[float]:
        key = f"{prefix_of(r.src, self.prefix)}>{prefix_of(r.dst, self.prefix)}"
        seg = self._seg.pop(key, None)
        if seg is None or r.ts - seg[0] >= self.gap:
            seg = (r.ts, 0, set(), set(), set())
        last, n, addrs, ports, services = seg
        n += 1
        if len(addrs) < 65536:  # sets are bounded too: the features saturate, the memory does not grow
            addrs.add(r.dst)
            ports.add(r.dport)
            services.add(service_of(r.proto, r.dport))
        self._seg[key] = (max(last, r.ts), n, addrs, ports, services)
        if len(self._seg) > self.max_pairs:
            self._seg.pop(next(iter(self._seg)))
        return [float(n), float(len(addrs)), float(len(ports)), float(len(services))]


def record_table(
    records: Sequence[ConnRecord],
    y_class: np.ndarray | None = None,
    class_names: Sequence[str] = ("benign", "attack"),
    segments: bool = True,
    name: str = "records",
    group_prefix: int = 24,
    seg: SegmentState | None = None,
) -> Table:
    """Records -> ``Table``; ``y_class`` defaults to benign. Without ``seg`` the records are sorted by
    time and get a fresh segment tracker (offline); with one (live: it persists across batches) they
    keep their order, so row i is ``records[i]``."""
    order = list(range(len(records)))
    if seg is None:
        order.sort(key=lambda i: records[i].ts)
        seg = SegmentState(prefix=group_prefix)
    recs = [records[i] for i in order]
    y = np.zeros(len(recs), np.int64) if y_class is None else np.asarray(y_class, np.int64)[order]
    rows = []
    for r in recs:
        row = [
            r.duration,
            r.orig_pkts,
            r.resp_pkts,
            r.orig_bytes,
            r.resp_bytes,
            r.orig_ip_bytes,
            r.resp_ip_bytes,
        ]
        row += [1.0 if c in r.history else 0.0 for c in HISTORY_LETTERS]
        if segments:
            row += seg.update(r)
        rows.append(row)
    names = BASE_NUMERIC + HISTORY_NUMERIC + (SEGMENT_NUMERIC if segments else [])
    numeric = np.asarray(rows, np.float64).reshape(len(recs), len(names))
    cats = {
        "proto": np.asarray([r.proto for r in recs], dtype=object).astype(str),
        "service": np.asarray([service_of(r.proto, r.dport) for r in recs], dtype=object).astype(str),
        "conn_state": np.asarray([r.conn_state for r in recs], dtype=object).astype(str),
    }
    t = Table(name, numeric, names, cats, y, list(class_names), group_keys(recs, group_prefix))
    t.extra["records"] = recs
    return t


def records_from_capture(path: str | os.PathLike[str], rules: FlowRules | None = None) -> list[ConnRecord]:
    """Every connection of a capture as a ``ConnRecord`` (the engine's flow table, counting all packets)."""
    table = FlowTable(PrefixSpec(), rules, records=True)
    for _ in table.samples(read_capture(path, CaptureStats())):
        pass
    assert table.records is not None
    return sorted(table.records, key=lambda r: r.ts)


def record_key(r: ConnRecord) -> tuple[str, str, str, int, str, int]:
    """The lab-dev labels key (as ``evaluate.sample_key``)."""
    return (f"{r.ts:.6f}", r.proto, r.src, r.sport, r.dst, r.dport)


@dataclass
class LabelledRecords:
    records: list[ConnRecord]
    is_attack: np.ndarray  # (R,) bool
    family: list[str]
    unlabelled: int

    def classes(self) -> tuple[np.ndarray, list[str]]:
        """Class per record and the class names: ``benign`` (0), then the attack families, sorted."""
        pairs = list(zip(self.family, self.is_attack, strict=True))
        names = ["benign", *sorted({f for f, a in pairs if a})]
        return np.asarray([names.index(f) if a else 0 for f, a in pairs], dtype=np.int64), names


def labelled_records(
    captures: Sequence[str | os.PathLike[str]], labels_csv: Sequence[str | os.PathLike[str]] = ()
) -> LabelledRecords:
    """Records of lab-dev style captures, labelled by ``labels_csv`` (one per capture) or else by the
    ``NAME.labels.csv`` beside each; records without a label row are left out and counted."""
    from ..traffic.labels import labels_beside as _labels_beside

    recs: list[ConnRecord] = []
    attack: list[bool] = []
    fams: list[str] = []
    unlabelled = 0
    for i, cap in enumerate(captures):
        beside = Path(labels_csv[i]) if i < len(labels_csv) else _labels_beside(cap)
        if beside is None:
            raise FileNotFoundError(f"{cap}: no labels CSV beside it")
        labels = read_labels(beside)
        for r in records_from_capture(cap):
            lab = labels.get(record_key(r))
            if lab is None:
                unlabelled += 1
                continue
            recs.append(r)
            attack.append(lab[0])
            fams.append(lab[1])
    return LabelledRecords(recs, np.asarray(attack, bool), fams, unlabelled)


def lab_table(
    folder: str | os.PathLike[str],
    files: Sequence[str] = ("benign-train", "attack-dev"),
    group_prefix: int = 32,
) -> Table:
    """A lab-dev folder as a record table for ``crossval``: binary labels, 'multiclass' = the families.

    Default files: benign-train + attack-dev (benign-val stays the held-out set of the shipped models).
    Groups default to /32 host pairs: every lab client sits in one /24, so /24 pairs would give only
    one benign and one attack group."""
    caps = [str(Path(folder) / f"{f}.pcap.gz") for f in files]
    lr = labelled_records(caps)
    y, names = lr.classes()
    return record_table(lr.records, y, names, name=f"lab-dev/{'+'.join(files)}", group_prefix=group_prefix)
