"""The flow-record autoencoder: a late, unsupervised detector over connection summaries.

Input: a record ``Table`` (``records.record_table``) encoded by a ``TableEncoder`` (numeric columns
log1p-compressed and standardised, categoricals one-hot). Network (``RecordAE``): fully connected
encoder F -> 64 -> 32 -> latent 16 and mirrored decoder, each hidden layer Linear -> BatchNorm ->
LeakyReLU -> Dropout; the latent layer is tanh-bounded so the Central Moment Discrepancy (below) has the
bounded support its definition needs. Trained on benign records only with Adam (weight decay),
ReduceLROnPlateau and early stopping (patience 3) on a held-out 10% slice. The anomaly score is the
per-record reconstruction MSE; the threshold is mean + 3 sigma of the training errors (``sigma``), or the
(1 - target FPR) quantile of the held-out errors (``quantile``), both stored.

Distribution shift: with ``cmd_weight > 0`` and unlabeled ``target`` rows (the deployment's traffic),
the loss adds ``cmd_weight * CMD_k(latent(train), latent(target))`` (Zellinger et al., ICLR 2017; moments
up to k = 5), pulling the latent distribution of the training days toward the deployment's.
"""

from __future__ import annotations

import datetime as _dt
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import __version__
from ..errors import ModelError
from ..fileio import sha256_file
from ..modelio import build_checked, finite_threshold, load_blob, save_blob
from .fitting import EarlyStopping
from .tables import Table, TableEncoder

FORMAT = "dpack-record-model"
FORMAT_VERSION = 1


@dataclass
class RecordAEConfig:
    n_features: int
    hidden: tuple[int, int] = (64, 32)
    latent: int = 16
    dropout: float = 0.1
    slope: float = 0.1  # LeakyReLU negative slope

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["hidden"] = list(self.hidden)
        return d


def _block(a: int, b: int, cfg: RecordAEConfig) -> list[nn.Module]:
    return [nn.Linear(a, b), nn.BatchNorm1d(b), nn.LeakyReLU(cfg.slope), nn.Dropout(cfg.dropout)]


class RecordAE(nn.Module):
    def __init__(self, cfg: RecordAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        h1, h2 = cfg.hidden
        self.encoder = nn.Sequential(
            *_block(cfg.n_features, h1, cfg), *_block(h1, h2, cfg), nn.Linear(h2, cfg.latent), nn.Tanh()
        )
        self.decoder = nn.Sequential(
            *_block(cfg.latent, h2, cfg), *_block(h2, h1, cfg), nn.Linear(h1, cfg.n_features)
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, F) -> reconstruction (B, F), latent (B, latent)."""
        z = self.encoder(x)
        return self.decoder(z), z

    def score(self, x: torch.Tensor, batch: int = 8192) -> np.ndarray:
        """(R, F) -> (R,) reconstruction MSE."""
        self.eval()
        out = []
        with torch.no_grad():
            for i in range(0, len(x), batch):
                xb = x[i : i + batch]
                out.append(((self(xb)[0] - xb) ** 2).mean(dim=1).numpy())
        return np.concatenate(out) if out else np.zeros(0, np.float32)


def cmd(a: torch.Tensor, b: torch.Tensor, k: int = 5, span: float = 2.0) -> torch.Tensor:
    """Central Moment Discrepancy between two samples (N, D) and (M, D) on support of width ``span``."""
    ma, mb = a.mean(0), b.mean(0)
    total = torch.linalg.vector_norm(ma - mb) / span
    ca, cb = a - ma, b - mb
    for j in range(2, k + 1):
        total = total + torch.linalg.vector_norm(ca.pow(j).mean(0) - cb.pow(j).mean(0)) / span**j
    return total


@dataclass
class RecordAEOptions:
    epochs: int = 60
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-5
    patience: int = 3
    sigma_k: float = 3.0
    target_fpr: float = 0.005
    threshold_method: str = "sigma"  # "sigma" (mean + k*std of training errors) | "quantile"
    cmd_weight: float = 0.0
    cmd_moments: int = 5
    seed: int = 1


@dataclass
class RecordDetector:
    """A trained record autoencoder with its encoder and threshold: what a model file holds."""

    net: RecordAE
    encoder: TableEncoder
    threshold: float
    meta: dict[str, Any]
    path: str = ""
    sha256: str = ""

    @property
    def name(self) -> str:
        return f"{self.meta.get('name', 'records-ae')}@{self.sha256[:12]}"

    def scores(self, t: Table) -> np.ndarray:
        return self.net.score(torch.from_numpy(self.encoder.transform(t)))


def fit_record_ae(
    benign: Table,
    opts: RecordAEOptions,
    target: Table | None = None,
    progress: Callable[[str], Any] | None = None,
) -> RecordDetector:
    """Train on benign records; ``target`` (unlabeled deployment records) enables the CMD penalty."""
    if opts.threshold_method not in ("sigma", "quantile"):
        raise ValueError("threshold method must be sigma or quantile")
    torch.manual_seed(opts.seed)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    rng = np.random.default_rng(opts.seed)
    if len(benign) < 50:
        raise ValueError(f"too few benign records to train ({len(benign)})")
    enc = TableEncoder("standard", log1p=True).fit(benign)
    x = torch.from_numpy(enc.transform(benign))
    xt = torch.from_numpy(enc.transform(target)) if target is not None and opts.cmd_weight > 0 else None
    perm = rng.permutation(len(x))
    n_hold = max(10, len(x) // 10)
    hold, tr = perm[:n_hold], perm[n_hold:]
    net = RecordAE(RecordAEConfig(n_features=x.shape[1]))
    opt = torch.optim.Adam(net.parameters(), lr=opts.lr, weight_decay=opts.weight_decay)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.3, patience=1)
    stopper, epochs = EarlyStopping(opts.patience), 0
    for epoch in range(opts.epochs):
        net.train()
        order = rng.permutation(tr)
        for i in range(0, len(order), opts.batch_size):
            b = torch.from_numpy(order[i : i + opts.batch_size])
            if len(b) < 2:
                continue  # batch norm needs two rows
            xb = x[b]
            rec, z = net(xb)
            loss = ((rec - xb) ** 2).mean()
            if xt is not None:
                tb = torch.from_numpy(rng.integers(0, len(xt), size=len(b)))
                loss = loss + opts.cmd_weight * cmd(z, net.encoder(xt[tb]), opts.cmd_moments)
            opt.zero_grad()
            loss.backward()
            opt.step()
        v = float(net.score(x[hold]).mean())
        sched.step(v)
        epochs = epoch + 1
        if progress:
            progress(f"records-ae epoch {epochs} held-out error {v:.5f}")
        if stopper.step(v, net):
            break
    stopper.restore(net)
    s_tr, s_hold = net.score(x[tr]), net.score(x[hold])
    thresholds = {
        "sigma": float(s_tr.mean() + opts.sigma_k * s_tr.std()),
        "quantile": float(np.quantile(s_hold, 1.0 - opts.target_fpr, method="higher")),
    }
    meta: dict[str, Any] = {
        "threshold_method": opts.threshold_method,
        "thresholds": thresholds,
        "sigma_k": opts.sigma_k,
        "target_fpr": opts.target_fpr,
        "epochs": epochs,
        "records": {"train": int(len(tr)), "held_out": int(len(hold))},
        "score_stats": {"train_mean": float(s_tr.mean()), "train_std": float(s_tr.std())},
        "cmd": {
            "weight": opts.cmd_weight,
            "moments": opts.cmd_moments,
            "target_records": 0 if xt is None else len(xt),
        },
    }
    return RecordDetector(net, enc, thresholds[opts.threshold_method], meta)


def save_record_model(path: str | os.PathLike[str], det: RecordDetector, **meta: Any) -> None:
    blob = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": det.net.cfg.as_dict(),
        "encoder": det.encoder.state(),
        "state_dict": {k: v.detach().cpu() for k, v in det.net.state_dict().items()},
        "threshold": det.threshold,
        **det.meta,
        "dpack_version": __version__,
        "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        **meta,
    }
    save_blob(path, blob)


def load_record_model(path: str | os.PathLike[str]) -> RecordDetector:
    p = Path(path)
    blob = load_blob(p, FORMAT, FORMAT_VERSION, "dpack record-autoencoder model")
    try:
        cfg_d = dict(blob["config"])
        cfg_d["hidden"] = tuple(cfg_d["hidden"])
        rcfg = RecordAEConfig(**cfg_d)
        net = build_checked(lambda: RecordAE(rcfg), blob["state_dict"], p, "dpack record model")
        enc = TableEncoder.from_state(blob["encoder"])
        threshold = finite_threshold(blob["threshold"], p, "dpack record model")
        if enc.n_features != net.cfg.n_features:
            raise ValueError("encoder and network disagree")
    except (KeyError, TypeError, ValueError, RuntimeError, AssertionError) as err:
        raise ModelError(f"{path}: damaged dpack record model ({str(err).splitlines()[0][:160]})") from None
    net.eval()
    meta = {k: v for k, v in blob.items() if k not in ("state_dict", "encoder", "config")}
    return RecordDetector(net, enc, threshold, meta, str(p), sha256_file(p))
