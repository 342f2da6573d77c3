"""Capture files -> arrays of encoded flows (the model's input) plus each flow's identity."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..traffic.capture import CaptureStats, read_blocks
from ..traffic.encode import PrefixSpec, encode_flow_into
from ..traffic.flows import FlowRules, FlowSample, FlowStats, FlowTable


@dataclass
class FlowSet:
    """Encoded flows: ``data`` (F, N, L) uint8, ``direction`` (F, N) int8, and their identities."""

    data: np.ndarray
    direction: np.ndarray
    samples: list[FlowSample]
    capture_stats: list[CaptureStats] = field(default_factory=list)
    flow_stats: list[FlowStats] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.samples)

    def subset(self, idx: np.ndarray) -> FlowSet:
        return FlowSet(self.data[idx], self.direction[idx], [self.samples[i] for i in idx])


def encode_samples(samples: Sequence[FlowSample], spec: PrefixSpec) -> tuple[np.ndarray, np.ndarray]:
    """``packets.encode_flow`` of every sample, as (F, N, L) uint8 and (F, N) int8 arrays."""
    n, length = spec.n_packets, spec.n_bytes
    data, direction = bytearray(len(samples) * n * length), bytearray(len(samples) * n)
    for i, s in enumerate(samples):
        encode_flow_into(s.frames, spec, data, i * n * length, direction, i * n)
    return (
        np.frombuffer(data, dtype=np.uint8).reshape(len(samples), n, length),
        np.frombuffer(direction, dtype=np.int8).reshape(len(samples), n),
    )


def iter_capture_samples(
    path: str | os.PathLike[str],
    spec: PrefixSpec,
    cstats: CaptureStats,
    fstats_out: list[FlowStats],
    rules: FlowRules | None = None,
) -> Iterable[FlowSample]:
    table = FlowTable(spec, rules)
    fstats_out.append(table.stats)
    return table.block_samples(read_blocks(path, cstats))


def extract(
    paths: Sequence[str | os.PathLike[str]],
    spec: PrefixSpec,
    rules: FlowRules | None = None,
    keep_frames: bool = False,
) -> FlowSet:
    """Encode every flow of every capture (each capture has its own flow table)."""
    samples: list[FlowSample] = []
    cstats: list[CaptureStats] = []
    fstats: list[FlowStats] = []
    chunks_d, chunks_r = [], []
    for p in paths:
        cs = CaptureStats()
        cstats.append(cs)
        batch = list(iter_capture_samples(p, spec, cs, fstats, rules))
        d, r = encode_samples(batch, spec)
        chunks_d.append(d)
        chunks_r.append(r)
        if not keep_frames:
            for s in batch:
                s.frames = []
        samples.extend(batch)
    data = np.concatenate(chunks_d) if chunks_d else np.zeros((0, spec.n_packets, spec.n_bytes), np.uint8)
    direction = np.concatenate(chunks_r) if chunks_r else np.zeros((0, spec.n_packets), np.int8)
    return FlowSet(data, direction, samples, cstats, fstats)
