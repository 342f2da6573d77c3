"""Supervised flow-record classifiers: the CNN-BiLSTM that names the attack, and its two baselines.

CNN-BiLSTM (Sinha & Manollas 2020 style, as the issue asks): the encoded record (F features, min-max
scaled, one-hot categoricals) is read as a 1-channel sequence of length F:
  Conv1D 64x3 -> ReLU -> max-pool -> batch norm -> BiLSTM 64 -> max-pool -> batch norm -> BiLSTM 128
  -> dropout -> dense (1 logit + sigmoid for binary, C logits + softmax for categories).
The pool sizes (4 and 4, where published code uses 2 or 5) are what lets 5-fold runs on 126k rows
finish on 2 CPU cores: measured 3,200 training rows/s at pool 4/4 vs 1,050 at 2/2 (``benchmarks``).
Rare classes are oversampled (with replacement) to at least ``oversample_floor`` x the largest class in
the training fold only, so validation rows are never duplicated into training.

Baselines: scikit-learn ``LogisticRegression`` and ``RandomForestClassifier`` on the same encoded rows.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from .fitting import EarlyStopping
from .tables import Table, TableEncoder

MODELS = ("cnn_bilstm", "logreg", "random_forest")


@dataclass
class BiLSTMConfig:
    n_features: int
    n_classes: int  # 2 -> binary (one sigmoid output)
    filters: int = 64
    lstm1: int = 64
    lstm2: int = 128
    pool1: int = 4
    pool2: int = 4
    dropout: float = 0.3

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class CNNBiLSTM(nn.Module):
    def __init__(self, cfg: BiLSTMConfig) -> None:
        super().__init__()
        self.cfg = cfg
        assert cfg.n_features >= cfg.pool1 * cfg.pool2, "too few features for the two pooling steps"
        self.conv = nn.Conv1d(1, cfg.filters, 3, padding=1)
        self.pool1 = nn.MaxPool1d(cfg.pool1)
        self.bn1 = nn.BatchNorm1d(cfg.filters)
        self.lstm1 = nn.LSTM(cfg.filters, cfg.lstm1, batch_first=True, bidirectional=True)
        self.pool2 = nn.MaxPool1d(cfg.pool2)
        self.bn2 = nn.BatchNorm1d(2 * cfg.lstm1)
        self.lstm2 = nn.LSTM(2 * cfg.lstm1, cfg.lstm2, batch_first=True, bidirectional=True)
        self.drop = nn.Dropout(cfg.dropout)
        self.out = nn.Linear(2 * cfg.lstm2, 1 if cfg.n_classes == 2 else cfg.n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, F) -> (B, 1) logit for binary, (B, C) logits otherwise."""
        h = torch.relu(self.conv(x.unsqueeze(1)))  # (B, filters, F)
        h = self.bn1(self.pool1(h))  # (B, filters, F/p1)
        h, _ = self.lstm1(h.transpose(1, 2))  # (B, F/p1, 2*lstm1)
        h = self.bn2(self.pool2(h.transpose(1, 2)))  # (B, 2*lstm1, F/p1/p2)
        _, (hn, _) = self.lstm2(h.transpose(1, 2))  # hn: (2, B, lstm2), last state of each direction
        return self.out(self.drop(torch.cat([hn[0], hn[1]], dim=1)))  # (B, out)

    def proba(self, x: torch.Tensor, batch: int = 4096) -> np.ndarray:
        """(R, F) -> (R, C) class probabilities (C = 2 for binary)."""
        self.eval()
        out = []
        with torch.no_grad():
            for i in range(0, len(x), batch):
                z = self(x[i : i + batch])
                if self.cfg.n_classes == 2:
                    p1 = torch.sigmoid(z[:, 0])
                    out.append(torch.stack([1 - p1, p1], dim=1).numpy())
                else:
                    out.append(torch.softmax(z, dim=1).numpy())
        return np.concatenate(out) if out else np.zeros((0, self.cfg.n_classes), np.float32)


def oversample(y: np.ndarray, floor: float, rng: np.random.Generator) -> np.ndarray:
    """Row indices where every class has at least ``floor`` x the largest class's count (drawn with
    replacement from its own rows); classes above the floor are kept as they are."""
    counts = np.bincount(y)
    target = int(floor * counts.max())
    idx = [np.arange(len(y))]
    for c, n in enumerate(counts):
        if 0 < n < target:
            idx.append(rng.choice(np.flatnonzero(y == c), size=target - n, replace=True))
    return np.concatenate(idx)


@dataclass
class FitOptions:
    epochs: int = 8
    batch_size: int = 512
    lr: float = 1e-3
    patience: int = 3  # early stopping on a 10% slice of the training fold
    oversample_floor: float = 0.05
    seed: int = 1


def fit_bilstm(
    x: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    opts: FitOptions,
    progress: Callable[[str], Any] | None = None,
) -> CNNBiLSTM:
    """Train on encoded rows ``x`` (R, F) float32 with integer targets ``y`` (R,)."""
    torch.manual_seed(opts.seed)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    rng = np.random.default_rng(opts.seed)
    perm = rng.permutation(len(y))
    n_stop = max(1, len(y) // 10)
    stop_idx, tr_idx = perm[:n_stop], perm[n_stop:]
    tr_idx = tr_idx[oversample(y[tr_idx], opts.oversample_floor, rng)]
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    net = CNNBiLSTM(BiLSTMConfig(n_features=x.shape[1], n_classes=n_classes))
    opt = torch.optim.Adam(net.parameters(), lr=opts.lr)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.3, patience=1)
    binary = n_classes == 2
    lossf: nn.Module = nn.BCEWithLogitsLoss() if binary else nn.CrossEntropyLoss()
    stopper = EarlyStopping(opts.patience, min_delta=1e-4)
    for epoch in range(opts.epochs):
        net.train()
        order = rng.permutation(tr_idx)
        for i in range(0, len(order), opts.batch_size):
            b = torch.from_numpy(order[i : i + opts.batch_size])
            opt.zero_grad()
            z = net(xt[b])
            loss = lossf(z[:, 0], yt[b].float()) if binary else lossf(z, yt[b])
            loss.backward()
            opt.step()
        net.eval()
        with torch.no_grad():
            zs = net(xt[stop_idx])
            ys = yt[stop_idx]
            v = float(lossf(zs[:, 0], ys.float()) if binary else lossf(zs, ys))
        sched.step(v)
        if progress:
            progress(f"cnn_bilstm epoch {epoch + 1}/{opts.epochs} held-out loss {v:.4f}")
        if stopper.step(v, net):
            break
    stopper.restore(net)
    return net


def fit_predict(
    model: str,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    n_classes: int,
    opts: FitOptions,
    progress: Callable[[str], Any] | None = None,
) -> np.ndarray:
    """Train ``model`` on the training rows, return predicted class indices for the test rows."""
    if model == "cnn_bilstm":
        net = fit_bilstm(x_train, y_train, n_classes, opts, progress)
        return net.proba(torch.from_numpy(x_test)).argmax(1)
    if model == "logreg":
        from sklearn.linear_model import LogisticRegression

        clf: Any = LogisticRegression(max_iter=300, random_state=opts.seed)
    elif model == "random_forest":
        from sklearn.ensemble import RandomForestClassifier

        clf = RandomForestClassifier(n_estimators=100, n_jobs=-1, random_state=opts.seed)
    else:
        raise ValueError(f"model must be one of {MODELS}, got {model!r}")
    clf.fit(x_train, y_train)
    return np.asarray(clf.predict(x_test), dtype=np.int64)


# --- a deployable classifier over connection records -------------------------------------------------

FORMAT = "dpack-record-classifier"
FORMAT_VERSION = 1


@dataclass
class RecordClassifier:
    """A trained CNN-BiLSTM with its encoder and class names (class 0 is the benign class). Only the
    CNN-BiLSTM is deployable: the baselines live in scikit-learn objects that only pickle can store, and
    dpack never unpickles a model file."""

    net: CNNBiLSTM
    encoder: TableEncoder
    class_names: list[str]
    meta: dict[str, Any]
    path: str = ""
    sha256: str = ""

    @property
    def name(self) -> str:
        return f"{self.meta.get('name', 'classifier')}@{self.sha256[:12]}"

    def categories(self, t: Table) -> tuple[list[str], np.ndarray]:
        """Each record's most likely class name and its probability."""
        p = self.net.proba(torch.from_numpy(self.encoder.transform(t)))
        best = p.argmax(1)
        return [self.class_names[i] for i in best], p[np.arange(len(best)), best]


def fit_record_classifier(
    t: Table, opts: FitOptions, progress: Callable[[str], Any] | None = None
) -> RecordClassifier:
    n = len(t.class_names)
    if n < 2 or len(np.unique(t.y_class)) < 2:
        raise ValueError("a classifier needs labelled rows of at least two classes")
    enc = TableEncoder("minmax", log1p=True).fit(t)
    net = fit_bilstm(enc.transform(t), t.y_class, n, opts, progress)
    counts = np.bincount(t.y_class, minlength=n)
    meta = {"class_counts": {c: int(k) for c, k in zip(t.class_names, counts, strict=True)}}
    return RecordClassifier(net, enc, list(t.class_names), meta)


def save_record_classifier(path: str | os.PathLike[str], clf: RecordClassifier, **meta: Any) -> None:
    from ..modelio import save_blob

    save_blob(
        path,
        {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "config": clf.net.cfg.as_dict(),
            "encoder": clf.encoder.state(),
            "class_names": clf.class_names,
            "state_dict": {k: v.detach().cpu() for k, v in clf.net.state_dict().items()},
            **clf.meta,
            **meta,
        },
    )


def load_record_classifier(path: str | os.PathLike[str]) -> RecordClassifier:
    from ..errors import ModelError
    from ..fileio import sha256_file
    from ..modelio import build_checked, load_blob

    blob = load_blob(path, FORMAT, FORMAT_VERSION, "dpack record-classifier model")
    try:
        ccfg = BiLSTMConfig(**blob["config"])
        net = build_checked(lambda: CNNBiLSTM(ccfg), blob["state_dict"], path, "dpack classifier")
        enc = TableEncoder.from_state(blob["encoder"])
        names = [str(c) for c in blob["class_names"]]
        if enc.n_features != net.cfg.n_features or len(names) != net.cfg.n_classes:
            raise ValueError("encoder, classes and network disagree")
    except (KeyError, TypeError, ValueError, RuntimeError, AssertionError) as err:
        raise ModelError(f"{path}: damaged dpack classifier ({str(err).splitlines()[0][:160]})") from None
    net.eval()
    meta = {k: v for k, v in blob.items() if k not in ("state_dict", "encoder", "config")}
    return RecordClassifier(net, enc, names, meta, str(path), sha256_file(path))
