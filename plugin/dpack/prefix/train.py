"""Training: benign captures -> CNN profiler -> autoencoder -> calibrated threshold -> model file.

1. Encode every flow of the benign captures (``flowset.extract``, the same ``encode_flow`` as scoring).
2. Split off calibration flows: interleaved time blocks (every k-th block of the capture's time line), so
   calibration sees the same mix of hours as training but not the same sessions' neighbours only.
3. Train the CNN to tell the profile classes apart (``profiles.py``: service groups, no manual labels).
4. Freeze it; standardise the profile vectors; train the autoencoder on the training profiles.
5. Score the calibration flows; the threshold is their (1 - target FPR) quantile (``quantile``), or
   mean + k*sigma (``sigma``). Attack traffic is never used.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import __version__
from ..fileio import sha256_file
from ..traffic.encode import PrefixSpec
from ..traffic.flows import FlowRules
from ..traffic.profiles import CLASS_NAMES, N_CLASSES, profile_class
from ..verdict import service_key
from .drift import score_baseline
from .flowset import FlowSet, extract
from .model import DPackNet, ModelConfig, to_input
from .modelfile import save_model

log = logging.getLogger(__name__)

THRESHOLD_METHODS = ("quantile", "sigma")


@dataclass
class TrainOptions:
    arch: str = "fast"
    spec: PrefixSpec = field(default_factory=PrefixSpec)
    val_fraction: float = 0.2
    target_fpr: float = 0.01
    threshold_method: str = "quantile"
    sigma_k: float = 3.0
    cnn_epochs: int = 8
    ae_epochs: int = 40
    batch_size: int = 256
    lr: float = 1e-3
    seed: int = 1
    name: str = ""
    rules: FlowRules = field(default_factory=FlowRules)  # how packets form flows (Zeek's timeouts)

    def __post_init__(self) -> None:
        if not 0.0 < self.val_fraction < 0.9:
            raise ValueError(f"--val-fraction must be in (0, 0.9), got {self.val_fraction}")
        if not 0.0 < self.target_fpr < 0.5:
            raise ValueError(f"--target-fpr must be in (0, 0.5), got {self.target_fpr}")
        if self.threshold_method not in THRESHOLD_METHODS:
            raise ValueError(f"threshold method must be one of {THRESHOLD_METHODS}")


def time_block_split(ts: np.ndarray, val_fraction: float, blocks: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val): the time line cut into ``blocks`` equal spans, every k-th span to validation."""
    order = np.argsort(ts, kind="stable")
    span = np.array_split(order, blocks)
    every = max(2, round(1 / val_fraction))
    val = np.concatenate([s for i, s in enumerate(span) if i % every == every // 2] or [np.array([], int)])
    mask = np.zeros(len(ts), dtype=bool)
    mask[val] = True
    return np.flatnonzero(~mask), np.flatnonzero(mask)


def _batches(n: int, size: int, rng: np.random.Generator | None) -> list[np.ndarray]:
    idx = rng.permutation(n) if rng is not None else np.arange(n)
    return [idx[i : i + size] for i in range(0, n, size)]


def batched_scores(net: DPackNet, x: torch.Tensor, batch: int = 4096) -> np.ndarray:
    out = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            out.append(net.score(x[i : i + batch]).numpy())
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def threshold_from(scores: np.ndarray, method: str, target_fpr: float, k: float) -> float:
    if method == "quantile":
        return float(np.quantile(scores, 1.0 - target_fpr, method="higher"))
    return float(scores.mean() + k * scores.std())


def fit(
    flows: FlowSet,
    opts: TrainOptions,
    progress: Callable[[str, int], Any] | None = None,
) -> tuple[DPackNet, dict[str, Any]]:
    """Train a network on benign ``flows``; returns it and the summary that goes into the model file."""
    torch.manual_seed(opts.seed)
    rng = np.random.default_rng(opts.seed)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    spec = opts.spec
    cfg = ModelConfig(
        arch=opts.arch,
        n_packets=spec.n_packets,
        n_bytes=spec.n_bytes,
        n_classes=N_CLASSES,
        profile_dim=1024 if opts.arch == "paper" else 256,
    )
    net = DPackNet(cfg)
    ts = np.array([s.ts for s in flows.samples])
    tr, va = time_block_split(ts, opts.val_fraction)
    if len(tr) < 50 or len(va) < 20:
        raise ValueError(f"too few benign flows to train ({len(tr)} train, {len(va)} calibration)")
    x = to_input(flows.data, flows.direction)  # (F, 2, N*L)
    y = torch.tensor([profile_class(s.proto, s.dport) for s in flows.samples], dtype=torch.long)
    xtr, ytr = x[tr], y[tr]

    # 3. CNN profiler
    opt = torch.optim.Adam(net.cnn.parameters(), lr=opts.lr)
    lossf = nn.CrossEntropyLoss()
    net.train()
    for epoch in range(opts.cnn_epochs):
        total = 0.0
        for b in _batches(len(tr), opts.batch_size, rng):
            opt.zero_grad()
            logits, _ = net.cnn(xtr[b])
            loss = lossf(logits, ytr[b])
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(b)
        if progress:
            progress(f"cnn epoch {epoch + 1}/{opts.cnn_epochs} loss {total / len(tr):.4f}", 1)
    net.eval()
    with torch.no_grad():
        acc = float((net.cnn(x[va])[0].argmax(1) == y[va]).float().mean())
        ptr = torch.cat([net.cnn.embed(xtr[i : i + 4096]) for i in range(0, len(tr), 4096)])  # (T, P)
    net.p_mean.copy_(ptr.mean(0))
    net.p_std.copy_(ptr.std(0).clamp_min(1e-3))
    net.x_mean.copy_(xtr.mean(0))
    ztr = net.standardise(ptr)

    # 4. autoencoder on standardised profiles, CNN frozen
    for p in net.cnn.parameters():
        p.requires_grad_(False)
    opt = torch.optim.Adam(net.ae.parameters(), lr=opts.lr)
    net.ae.train()
    # Class-balanced sampling (weights ~ 1/sqrt(class size)): rare benign services (FTP, ICMP) would
    # otherwise be reconstructed badly and cause most of the false alarms.
    counts = torch.bincount(ytr, minlength=N_CLASSES).float()
    w = (1.0 / counts.clamp_min(1).sqrt())[ytr].numpy()
    w = w / w.sum()
    for epoch in range(opts.ae_epochs):
        total = 0.0
        draw = rng.choice(len(tr), size=len(tr), p=w)
        for b in [draw[i : i + opts.batch_size] for i in range(0, len(tr), opts.batch_size)]:
            opt.zero_grad()
            loss = ((net.ae(ztr[b]) - ztr[b]) ** 2).mean()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(b)
        if progress:
            progress(f"autoencoder epoch {epoch + 1}/{opts.ae_epochs} loss {total / len(tr):.4f}", 1)
    net.eval()
    for p in net.cnn.parameters():
        p.requires_grad_(True)

    # 5. threshold on calibration flows only
    s_va = batched_scores(net, x[va])
    s_tr = batched_scores(net, xtr)
    thr = threshold_from(s_va, opts.threshold_method, opts.target_fpr, opts.sigma_k)
    summary = {
        "threshold": thr,
        "threshold_method": opts.threshold_method,
        "thresholds": {
            "quantile": threshold_from(s_va, "quantile", opts.target_fpr, opts.sigma_k),
            "sigma": threshold_from(s_va, "sigma", opts.target_fpr, opts.sigma_k),
        },
        "target_fpr": opts.target_fpr,
        "sigma_k": opts.sigma_k,
        "score_stats": {
            "calibration": _stats(s_va),
            "train": _stats(s_tr),
            "calibration_fpr_at_threshold": float((s_va > thr).mean()),
        },
        "classes": CLASS_NAMES,
        "class_counts": {
            CLASS_NAMES[c]: int((y == c).sum()) for c in range(len(CLASS_NAMES)) if (y == c).any()
        },
        "cnn_val_accuracy": acc,
        "flows": {"train": int(len(tr)), "calibration": int(len(va))},
        # per service, the deciles of the calibration scores: what dpack serve's drift watch compares with
        "score_baseline": score_baseline(
            s_va, [service_key(flows.samples[i].proto_name, flows.samples[i].dport) for i in va], thr
        ),
    }
    return net, summary


def _stats(s: np.ndarray) -> dict[str, float]:
    return {
        "n": int(len(s)),
        "mean": float(s.mean()),
        "std": float(s.std()),
        "p50": float(np.quantile(s, 0.5)),
        "p99": float(np.quantile(s, 0.99)),
        "max": float(s.max()),
    }


def train(
    paths: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    opts: TrainOptions,
    progress: Callable[[str, int], Any] | None = None,
) -> dict[str, Any]:
    """Train from benign capture files and write the model file; returns the summary."""
    t0 = time.time()
    flows = extract(paths, opts.spec, opts.rules)
    if progress:
        progress(f"encoded {len(flows)} flows from {len(paths)} file(s)", 1)
    net, summary = fit(flows, opts, progress)
    name = opts.name or f"dpack-{opts.arch}-n{opts.spec.n_packets}-l{opts.spec.n_bytes}-{opts.spec.policy}"
    provenance = {
        "files": [{"name": Path(p).name, "sha256": sha256_file(p)} for p in paths],
        "flows_total": len(flows),
        "frames": sum(c.frames for c in flows.capture_stats),
        "dpack_version": __version__,
        "torch_version": str(torch.__version__),
        "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "seed": opts.seed,
        "epochs": {"cnn": opts.cnn_epochs, "autoencoder": opts.ae_epochs},
        "seconds": round(time.time() - t0, 1),
        "flow_rules": opts.rules.as_dict(),
    }
    save_model(out, net, opts.spec, name=name, provenance=provenance, **summary)
    summary["provenance"] = provenance
    summary["name"] = name
    return summary
