"""Flow-record tables: the public feature tables (NSL-KDD, UNSW-NB15) and the encoder that turns any record
table (those, or dpack's own connection summaries from ``records.features``) into a numeric matrix.

A ``Table`` is columns, not rows: ``numeric`` (R, F) float64 with ``numeric_names``, ``categorical`` a dict
of name -> (R,) str array, and the targets ``y_binary`` (R,) 0/1 and ``y_class`` (R,) int into
``class_names`` (class 0 is always the benign class). Readers accept the files as published (gzip, BOM,
CRLF); a row that does not parse is refused with its line number rather than guessed at.
"""

from __future__ import annotations

import csv
import gzip
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DpackError


class TableError(DpackError):
    """A feature table that cannot be read or does not have the published layout."""


@dataclass
class Table:
    name: str
    numeric: np.ndarray  # (R, F) float64
    numeric_names: list[str]
    categorical: dict[str, np.ndarray]  # name -> (R,) str
    y_class: np.ndarray  # (R,) int64 into class_names; 0 = benign
    class_names: list[str]
    groups: np.ndarray | None = None  # (R,) str group key (e.g. "src/24>dst/24"), when known
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        r = len(self.y_class)
        assert self.numeric.shape == (r, len(self.numeric_names)), "numeric must be (rows, names)"
        assert all(len(v) == r for v in self.categorical.values()), "categorical columns must have R rows"

    def __len__(self) -> int:
        return len(self.y_class)

    @property
    def y_binary(self) -> np.ndarray:
        return (self.y_class != 0).astype(np.int64)

    def target(self, task: str) -> tuple[np.ndarray, list[str]]:
        """Targets and class names for ``task``: "binary" (benign/attack) or "multiclass"."""
        if task == "binary":
            return self.y_binary, ["benign", "attack"]
        return self.y_class, list(self.class_names)

    def without(self, names: Sequence[str]) -> Table:
        """The same rows without the numeric columns ``names``."""
        keep = [i for i, n in enumerate(self.numeric_names) if n not in names]
        t = Table(
            self.name,
            self.numeric[:, keep],
            [self.numeric_names[i] for i in keep],
            self.categorical,
            self.y_class,
            self.class_names,
            self.groups,
            dict(self.extra),
        )
        return t

    def take(self, idx: np.ndarray) -> Table:
        return Table(
            self.name,
            self.numeric[idx],
            list(self.numeric_names),
            {k: v[idx] for k, v in self.categorical.items()},
            self.y_class[idx],
            list(self.class_names),
            None if self.groups is None else self.groups[idx],
            dict(self.extra),
        )


# --- NSL-KDD -------------------------------------------------------------------------------------------

NSL_COLUMNS = (
    "duration protocol_type service flag src_bytes dst_bytes land wrong_fragment urgent hot "
    "num_failed_logins logged_in num_compromised root_shell su_attempted num_root num_file_creations "
    "num_shells num_access_files num_outbound_cmds is_host_login is_guest_login count srv_count "
    "serror_rate srv_serror_rate rerror_rate srv_rerror_rate same_srv_rate diff_srv_rate "
    "srv_diff_host_rate dst_host_count dst_host_srv_count dst_host_same_srv_rate dst_host_diff_srv_rate "
    "dst_host_same_src_port_rate dst_host_srv_diff_host_rate dst_host_serror_rate "
    "dst_host_srv_serror_rate dst_host_rerror_rate dst_host_srv_rerror_rate"
).split()
NSL_CATEGORICAL = ("protocol_type", "service", "flag")
NSL_CLASSES = ["normal", "DoS", "Probe", "R2L", "U2R"]
# The mapping of the dataset's README (httptunnel -> U2R, worm -> R2L; both occur in the test tables only).
NSL_FAMILY = {
    **dict.fromkeys(
        "back land neptune pod smurf teardrop apache2 mailbomb processtable udpstorm".split(), "DoS"
    ),
    **dict.fromkeys("ipsweep nmap portsweep satan mscan saint".split(), "Probe"),
    **dict.fromkeys(
        (
            "ftp_write guess_passwd imap multihop phf spy warezclient warezmaster named sendmail "
            "snmpgetattack snmpguess xlock xsnoop worm"
        ).split(),
        "R2L",
    ),
    **dict.fromkeys("buffer_overflow loadmodule perl rootkit ps sqlattack xterm httptunnel".split(), "U2R"),
}

# --- UNSW-NB15 -----------------------------------------------------------------------------------------

UNSW_CATEGORICAL = ("proto", "service", "state")
UNSW_CLASSES = [
    "Normal",
    "Generic",
    "Exploits",
    "Fuzzers",
    "DoS",
    "Reconnaissance",
    "Analysis",
    "Backdoor",
    "Shellcode",
    "Worms",
]


def _open_text(path: Path) -> io.TextIOBase:
    raw = gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")
    return io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")


def _float(value: str, where: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise TableError(f"{where}: {value[:40]!r} is not a number") from None


def read_nsl_kdd(path: Path) -> Table:
    """One NSL-KDD text table (43 comma-separated fields per row, no header)."""
    numeric_names = [c for c in NSL_COLUMNS if c not in NSL_CATEGORICAL]
    cat_idx = [NSL_COLUMNS.index(c) for c in NSL_CATEGORICAL]
    num_idx = [NSL_COLUMNS.index(c) for c in numeric_names]
    nums: list[list[float]] = []
    cats: list[list[str]] = [[] for _ in NSL_CATEGORICAL]
    labels: list[int] = []
    with _open_text(path) as fh:
        for lineno, row in enumerate(csv.reader(fh), 1):
            if not row:
                continue
            if len(row) != 43:
                raise TableError(f"{path.name}:{lineno}: {len(row)} fields, NSL-KDD rows have 43")
            where = f"{path.name}:{lineno}"
            nums.append([_float(row[i], where) for i in num_idx])
            for j, i in enumerate(cat_idx):
                cats[j].append(row[i])
            name = row[41]
            fam = "normal" if name == "normal" else NSL_FAMILY.get(name)
            if fam is None:
                raise TableError(f"{where}: unknown attack type {name[:40]!r}")
            labels.append(NSL_CLASSES.index(fam))
    if not labels:
        raise TableError(f"{path}: no rows")
    return Table(
        f"nsl-kdd/{path.name}",
        np.asarray(nums, dtype=np.float64),
        numeric_names,
        {c: np.asarray(v) for c, v in zip(NSL_CATEGORICAL, cats, strict=True)},
        np.asarray(labels, dtype=np.int64),
        list(NSL_CLASSES),
    )


def read_unsw_nb15(path: Path) -> Table:
    """One UNSW-NB15 partition CSV (header line, ``id`` dropped, ``attack_cat`` is the 10-class target)."""
    with _open_text(path) as fh:
        reader = csv.reader(fh)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            raise TableError(f"{path}: empty file") from None
        need = {"id", "attack_cat", "label", *UNSW_CATEGORICAL}  # every non-numeric column
        if not need <= set(header):
            raise TableError(f"{path}: not a UNSW-NB15 partition (missing {sorted(need - set(header))})")
        numeric_names = [h for h in header if h not in need]
        num_idx = [header.index(h) for h in numeric_names]
        cat_idx = [header.index(h) for h in UNSW_CATEGORICAL]
        i_cat, i_label = header.index("attack_cat"), header.index("label")
        nums: list[list[float]] = []
        cats: list[list[str]] = [[] for _ in UNSW_CATEGORICAL]
        labels: list[int] = []
        for lineno, row in enumerate(reader, 2):
            if not row:
                continue
            where = f"{path.name}:{lineno}"
            if len(row) != len(header):
                raise TableError(f"{where}: {len(row)} fields, the header has {len(header)}")
            nums.append([_float(row[i], where) for i in num_idx])
            for j, i in enumerate(cat_idx):
                cats[j].append(row[i].strip())
            cat = row[i_cat].strip() or "Normal"
            if cat not in UNSW_CLASSES:
                raise TableError(f"{where}: unknown attack_cat {cat[:40]!r}")
            if (cat != "Normal") != (row[i_label].strip() == "1"):
                raise TableError(f"{where}: label and attack_cat disagree")
            labels.append(UNSW_CLASSES.index(cat))
    if not labels:
        raise TableError(f"{path}: no rows")
    return Table(
        f"unsw-nb15/{path.name}",
        np.asarray(nums, dtype=np.float64),
        numeric_names,
        {c: np.asarray(v) for c, v in zip(UNSW_CATEGORICAL, cats, strict=True)},
        np.asarray(labels, dtype=np.int64),
        list(UNSW_CLASSES),
    )


# --- encoding ------------------------------------------------------------------------------------------

SCALINGS = ("minmax", "standard")


@dataclass
class TableEncoder:
    """Numeric columns scaled (min-max to [0, 1], or standardised), categoricals one-hot (a value not seen
    when fitting maps to all zeros). Fit on training rows only; the state is plain lists, so it goes into
    a model file that ``torch.load(weights_only=True)`` can read."""

    scaling: str = "minmax"
    log1p: bool = False  # compress heavy-tailed counts (bytes, durations) before scaling
    numeric_names: list[str] = field(default_factory=list)
    lo: list[float] = field(default_factory=list)
    hi: list[float] = field(default_factory=list)
    vocab: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        assert self.scaling in SCALINGS, f"scaling must be one of {SCALINGS}"

    def _prep(self, numeric: np.ndarray) -> np.ndarray:
        x = np.nan_to_num(numeric.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        if self.log1p:
            x = np.sign(x) * np.log1p(np.abs(x))
        return x

    def fit(self, t: Table) -> TableEncoder:
        x = self._prep(t.numeric)
        self.numeric_names = list(t.numeric_names)
        if self.scaling == "minmax":
            self.lo, self.hi = x.min(0).tolist(), x.max(0).tolist()
        else:
            self.lo, self.hi = x.mean(0).tolist(), x.std(0).tolist()
        self.vocab = {k: sorted(set(v.tolist())) for k, v in t.categorical.items()}
        return self

    @property
    def n_features(self) -> int:
        return len(self.numeric_names) + sum(len(v) for v in self.vocab.values())

    @property
    def feature_names(self) -> list[str]:
        return self.numeric_names + [f"{k}={v}" for k, vals in self.vocab.items() for v in vals]

    def transform(self, t: Table) -> np.ndarray:
        """(R, n_features) float32."""
        if list(t.numeric_names) != self.numeric_names or set(t.categorical) != set(self.vocab):
            raise TableError(f"{t.name}: columns differ from the ones the encoder was fit on")
        x = self._prep(t.numeric)
        lo, hi = np.asarray(self.lo), np.asarray(self.hi)
        if self.scaling == "minmax":
            span = np.where(hi > lo, hi - lo, 1.0)
            x = np.clip((x - lo) / span, 0.0, 1.0)  # unseen extremes clip instead of exploding
        else:
            x = (x - lo) / np.where(hi > 1e-9, hi, 1.0)
            x = np.clip(x, -50.0, 50.0)
        parts = [x.astype(np.float32)]
        for k, vals in self.vocab.items():
            parts.append(one_hot(t.categorical[k], vals))
        return np.concatenate(parts, axis=1)

    def state(self) -> dict[str, Any]:
        return {
            "scaling": self.scaling,
            "log1p": self.log1p,
            "numeric_names": self.numeric_names,
            "lo": self.lo,
            "hi": self.hi,
            "vocab": self.vocab,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> TableEncoder:
        return cls(**state)


def one_hot(values: np.ndarray, vocab: Sequence[str]) -> np.ndarray:
    """(R,) str -> (R, len(vocab)) float32; values outside ``vocab`` are all-zero rows."""
    index = {v: i for i, v in enumerate(vocab)}
    out = np.zeros((len(values), len(vocab)), dtype=np.float32)
    cols = np.fromiter((index.get(v, -1) for v in values.tolist()), dtype=np.int64, count=len(values))
    hit = cols >= 0
    out[np.flatnonzero(hit), cols[hit]] = 1.0
    return out
