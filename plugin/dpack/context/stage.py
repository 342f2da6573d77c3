"""The second stage: the prefix score and the host context of a flow, scored against benign host histories.

Each column (the prefix score as ``log(score / threshold)``, and every ``state.FEATURES`` count or share)
has a one-sided benign tail: ``t = -log10((benign rows >= x, + 1) / (benign rows, + 1))``; large is
unusual for every column (more flows, more responders, more failures, a higher prefix score). A flow's
context score sums, over groups of columns that measure one thing, the largest tail of each (Fisher's
combination on -log10 p, correlated columns counted once): an HTTP flood's GETs are each ordinary to the
prefix model but carry the rate and the same-service tails; a lone, mildly odd benign flow in an ordinary
host context stays under the threshold that a prefix alarm alone would pass. A flow whose prefix score is
above every benign score it was fitted on is anomalous whatever its context (a spoofed flood has no host
history to add). The threshold is the benign held-back quantile at the target false-positive rate.

Fitted on benign traffic only: host histories of the benign capture in time order, the first part for
the tails, the held-back last part for the threshold.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import ModelError
from ..verdict import Verdict, sensor_millis, service_key
from .state import FEATURES, HostKey, HostState, prefix_feature

COLUMNS = ("prefix.score", *FEATURES)
# columns that measure one thing: the prefix; the host's rate; its spread over responders and ports; the
# same service again and again; failures; what the prefix flagged of it
GROUPS = ([0], [1, 2, 3], [4, 5], [6], [7, 8], [9])
# count columns that are measured against the host's own benign level (``ContextModel.scales``)
SCALED = [COLUMNS.index(c) for c in (
    "host.new_flows_1s", "host.new_flows_10s", "host.new_flows_60s", "host.responders_60s",
    "host.ports_60s", "host.same_service_60s", "host.failed_60s",
)]  # fmt: skip
MAX_KNOWN_HOSTS = 65_536  # hosts with a benign level of their own (the busiest of the benign capture)
# A host (a service) with fewer benign flows is measured against the typical host's (service's) level: a
# 99th percentile of 80 flows is their maximum, every relative count of the fit is then <= 1 and the next
# hour's ordinary fluctuation is beyond every benign value (a site of 30 quiet hosts: held-back FPR 8.3%
# at a minimum of 50 flows, 0.8% at 500).
HOST_LEVEL_MIN_ROWS = 500
SERVICE_LEVEL_MIN_ROWS = 500
# A rarer service (50-499 benign flows: SSH, FTP in the lab) still has a level of its own, its largest
# benign count of repeats times ``SMALL_HEADROOM``: nobody logs in 200 times a minute, and the typical
# service's level (a resolver's) would say they may.
SERVICE_SMALL_ROWS = 50
SMALL_HEADROOM = 2.0
FORMAT_VERSION = 4  # 2: decayed rates, grouped tails; 3: per-host levels; 4: per-service levels, tails beyond
SAME_SERVICE = COLUMNS.index("host.same_service_60s")
MAX_SERVICES = 4096  # services (proto/port) with a benign level of their own
MAX_TAIL = 12.0  # -log10 p, at most, of a value beyond every benign one
# steepest tail beyond the benign values: 10x the largest benign value is at most 100x rarer than it. Set
# before measuring, not fitted: a tail fitted to one capture's top 1% (often a steady load generator's
# rate) fell off 10x per 1.25x, and the next day's benign traffic of that host was beyond it.
MAX_ALPHA = 2.0
MAX_LEVELS = 8192  # distinct values kept per column (quantiles beyond): bounded model file


@dataclass
class Tails:
    """Per column: sorted distinct benign values and how many benign rows are >= each."""

    levels: list[np.ndarray]
    ge: list[np.ndarray]
    n: int
    # per column, how fast the tail falls beyond the benign values (Hill's estimate of a power law over
    # the top 1%): a value at 10x the largest benign one is rarer than one just above it, which the
    # empirical tail alone (at most -log10(1 / (n + 1))) cannot say
    alpha: list[float] = field(default_factory=list)

    @classmethod
    def fit(cls, rows: np.ndarray) -> Tails:
        levels, ge, alpha = [], [], []
        for j in range(rows.shape[1]):
            col = np.sort(rows[:, j].astype(np.float64))
            alpha.append(_hill(col))
            vals = np.unique(col)
            if len(vals) > MAX_LEVELS:  # quantiles, and every value of the top 1% exactly
                top = vals[vals >= np.quantile(col, 0.99)]
                q = np.quantile(col, np.linspace(0, 0.99, MAX_LEVELS - min(len(top), MAX_LEVELS // 2)))
                vals = np.unique(np.concatenate([q, top[-MAX_LEVELS // 2 :]]))
            idx = np.searchsorted(col, vals, side="left")
            levels.append(vals.astype(np.float32))
            ge.append((len(col) - idx).astype(np.int64))
        return cls(levels, ge, len(rows), alpha)

    def tails(self, rows: np.ndarray) -> np.ndarray:
        """(B, C) tail of each value: -log10((benign >= x, + 1) / (n + 1)); beyond the largest benign
        value ``top`` (positive), that of the largest plus ``alpha * log10(x / top)``, at most ``MAX_TAIL``."""
        out = np.zeros(rows.shape, dtype=np.float64)
        for j in range(rows.shape[1]):
            x = rows[:, j]
            i = np.searchsorted(self.levels[j], x, side="left")
            ge = np.where(i < len(self.ge[j]), self.ge[j][np.minimum(i, len(self.ge[j]) - 1)], 0)
            out[:, j] = -np.log10((ge + 1) / (self.n + 1))
            top = float(self.levels[j][-1])
            if top > 0 and self.alpha[j] > 0:
                over = x > top
                if over.any():
                    out[over, j] = np.minimum(
                        out[over, j] + self.alpha[j] * np.log10(x[over] / top), MAX_TAIL
                    )
        return out


def _hill(col: np.ndarray) -> float:
    """Hill's estimate of the power-law index of a sorted column's top 1% (0: too few to say)."""
    u = float(np.quantile(col, 0.99)) if len(col) else 0.0
    if u <= 0:
        pos = col[col > 0]
        u = float(pos[0]) if len(pos) else 0.0
    over = col[col > u] if u > 0 else col[:0]
    if len(over) < 10:
        return 0.0
    return float(min(1.0 / max(float(np.mean(np.log(over / u))), 1e-3), MAX_ALPHA))


def service_of(v: Verdict) -> str:
    """A flow's service, for the benign level of repeats to one responder: protocol and responder port."""
    return service_key(v.proto, v.dport)


@dataclass
class ContextModel:
    tails: Tails
    threshold: float  # on the summed tails
    prefix_max: float  # highest benign prefix column it was fitted on
    key: HostKey = field(default_factory=HostKey)
    columns: tuple[str, ...] = COLUMNS
    provenance: dict[str, Any] = field(default_factory=dict)
    # host key -> its own benign level of each ``SCALED`` count (its 99th percentile in the benign
    # capture); a host not in it has ``typical`` (the median host's). Counts are scored as multiples of
    # the level: the site's load generator at 160 flows a second is itself, a new host at 160 is not.
    levels: dict[str, np.ndarray] = field(default_factory=dict)
    typical: np.ndarray = field(default_factory=lambda: np.ones(len(SCALED), dtype=np.float32))
    # service (``service_of``) -> the 99th percentile of ``host.same_service_60s`` of its benign flows; a
    # service not in it has ``typical_service``. Repeats are measured against the smaller of the host's
    # and the service's level: a workstation asks its resolver 100 times a minute, nobody logs in to SSH
    # 100 times a minute. Only for hosts without a level of their own: a known host is measured against
    # itself (the site's load generator hammers its web server every day; levels per host and service
    # were too strict for the next day's benign traffic).
    services: dict[str, float] = field(default_factory=dict)
    typical_service: float = 1.0

    def relative(self, rows: np.ndarray, hosts: Sequence[str], services: Sequence[str]) -> np.ndarray:
        """``rows`` (``COLUMNS``) with the ``SCALED`` counts divided by each host's benign level (and
        repeats by the service's, when smaller)."""
        out = rows.astype(np.float32, copy=True)
        if len(out):
            lv = np.stack([self.levels.get(h, self.typical) for h in hosts])
            svc = np.array(
                [
                    self.services.get(s, self.typical_service) if h not in self.levels else np.inf
                    for h, s in zip(hosts, services, strict=True)
                ],
                dtype=np.float32,
            )
            k = SCALED.index(SAME_SERVICE)
            lv[:, k] = np.minimum(lv[:, k], svc)
            out[:, SCALED] /= lv
        return out

    def score_rows(
        self, rows: np.ndarray, hosts: Sequence[str], services: Sequence[str], use_prefix: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """(context score, tails) of rows of ``columns`` of ``hosts``; without ``use_prefix``, the host
        context alone. The score sums, over groups of columns that measure one thing (``GROUPS``), the
        largest tail in each: one burst raises the 1, 10 and 60 s rates together, one piece of evidence."""
        t = self.tails.tails(self.relative(rows, hosts, services))
        if not use_prefix:
            t[:, 0] = 0.0
        return sum(t[:, g].max(axis=1) for g in GROUPS), t

    # --- model file ---------------------------------------------------------------------------------------

    def to_blob(self) -> dict[str, Any]:
        """Plain lists and numbers: what a model file loaded with ``weights_only=True`` may hold."""
        return {
            "format_version": FORMAT_VERSION,
            "columns": list(self.columns),
            "levels": [v.tolist() for v in self.tails.levels],
            "ge": [v.tolist() for v in self.tails.ge],
            "n": self.tails.n,
            "threshold": self.threshold,
            "prefix_max": self.prefix_max,
            "prefix_v4": self.key.prefix_v4,
            "prefix_v6": self.key.prefix_v6,
            "host_levels": {h: v.tolist() for h, v in self.levels.items()},
            "typical_level": self.typical.tolist(),
            "alpha": list(self.tails.alpha),
            "service_levels": dict(self.services),
            "typical_service": self.typical_service,
            "provenance": self.provenance,
        }

    @classmethod
    def from_blob(cls, blob: Any, where: str) -> ContextModel:
        """Checked: one ``ModelError`` line for anything that does not fit."""
        try:
            if blob.get("format_version") != FORMAT_VERSION:
                raise ModelError(
                    f"{where}: context stage of version {blob.get('format_version')!r}, dpack reads {FORMAT_VERSION}"
                )
            if tuple(blob["columns"]) != COLUMNS:
                raise ModelError(
                    f"{where}: the context stage's features are not the ones this dpack computes"
                )
            levels = [np.asarray(v, dtype=np.float32) for v in blob["levels"]]
            ge = [np.asarray(v, dtype=np.int64) for v in blob["ge"]]
            n = int(blob["n"])
            thr, pmax = float(blob["threshold"]), float(blob["prefix_max"])
            key = HostKey(int(blob["prefix_v4"]), int(blob["prefix_v6"]))
            prov = dict(blob.get("provenance", {}))
            host_levels = {
                str(h): np.asarray(v, dtype=np.float32) for h, v in dict(blob["host_levels"]).items()
            }
            typical = np.asarray(blob["typical_level"], dtype=np.float32)
            alpha = [float(a) for a in blob["alpha"]]
            services = {str(k): float(v) for k, v in dict(blob["service_levels"]).items()}
            typical_service = float(blob["typical_service"])
        except ModelError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError):
            raise ModelError(f"{where}: damaged context stage") from None
        ok = (
            len(levels) == len(ge) == len(COLUMNS)
            and all(len(a) == len(b) and len(a) <= MAX_LEVELS for a, b in zip(levels, ge, strict=True))
            and n > 0
            and math.isfinite(thr)
            and thr > 0
            and math.isfinite(pmax)
            and all(np.isfinite(a).all() and (np.diff(a) >= 0).all() for a in levels)
            and len(host_levels) <= MAX_KNOWN_HOSTS
            and len(alpha) == len(COLUMNS)
            and all(0 <= a <= 10 for a in alpha)
            and len(services) <= MAX_SERVICES
            and all(math.isfinite(x) and x >= 1 for x in (typical_service, *services.values()))
            and all(
                v.shape == (len(SCALED),) and np.isfinite(v).all() and (v >= 1).all()
                for v in (typical, *host_levels.values())
            )
        )
        if not ok:
            raise ModelError(f"{where}: damaged context stage (tails, threshold or counts out of range)")
        return cls(
            Tails(levels, ge, n, alpha), thr, pmax, key, COLUMNS, prov, host_levels, typical, services,
            typical_service,
        )  # fmt: skip


def failed_rows(data: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """(B,) bool: the prefix shows the flow failed - no packet from the responder, or a TCP reset (the
    encoded bytes start at the IP header; masking keeps version, protocol and TCP flags)."""
    no_answer = ~(direction == -1).any(axis=1)
    version = data[:, :, 0] >> 4
    ihl = (data[:, :, 0] & 0x0F).astype(np.intp) * 4
    v4_tcp = (version == 4) & (data[:, :, 9] == 6)
    v6_tcp = (version == 6) & (data[:, :, 6] == 6)
    at = np.where(v6_tcp, 40 + 13, ihl + 13)
    at = np.clip(at, 0, data.shape[2] - 1)
    flags = np.take_along_axis(data, at[:, :, None], axis=2)[:, :, 0]
    rst = ((v4_tcp | v6_tcp) & (direction != 0) & ((flags & 0x04) != 0)).any(axis=1)
    return no_answer | rst


def context_scorer(
    model: Any, cfg: Any, enabled: bool = True, explain: str | None = None
) -> ContextScorer | None:
    """The stage for a loaded prefix model (``model.context``) as the config sets it up (``detectors``:
    on or off, hosts kept; ``rules``: the escalation it counts for; ``scoring.explain``, or ``explain``:
    "none" names no features), or None: no stage in the file, or off."""
    ctx = getattr(model, "context", None)
    if not (enabled and cfg.detectors.context and ctx is not None):
        return None
    policy = cfg.rules_policy()
    return ContextScorer(
        ctx,
        cfg.detectors.context_max_hosts,
        escalation=(policy.window, policy.threshold_flows),
        explain=(explain or cfg.scoring.explain) != "none",
    )


def context_rows(state: HostState, verdicts: Sequence[Verdict]) -> tuple[np.ndarray, list[str]]:
    """Context rows (``COLUMNS``) of prefix verdicts in stream order and their host keys, each flow
    added to ``state`` after its row: the one code fitting and scoring share."""
    out = []
    hosts = []
    observe, add = state.observe, state.add
    for v in verdicts:
        # times to the millisecond: what Zeek's JSON carries, so live and offline histories agree
        t = sensor_millis(v.ts) / 1000
        host, feats = observe(v.src, t, v.dst, v.dport, v.failed)
        out.append([prefix_feature(v.score, v.threshold), *feats])
        hosts.append(host)
        add(host, t, v.dst, v.dport, v.failed, v.anomalous)
    return np.array(out, dtype=np.float32).reshape(len(out), len(COLUMNS)), hosts


class ContextScorer:
    """The stage over a stream of prefix verdicts, in the order they are decided; state carried across
    calls (a host's history spans batches). ``use_prefix=False`` scores the host context alone.
    ``escalation`` (the rules' window and flow count): each anomalous verdict carries the number of its
    host's anomalous flows within the window (``host_alarms``), which the rules' escalation reads - one
    memory of a host, keyed as the stage keys it (an IPv6 attacker counts per /64 whatever its address).
    ``explain=False`` (``scoring.explain: none``): a flow the stage flagged names no features either."""

    def __init__(
        self,
        model: ContextModel,
        max_hosts: int | None = None,
        use_prefix: bool = True,
        escalation: tuple[float, int] = (60.0, 5),
        explain: bool = True,
    ) -> None:
        self.model = model
        self.state = HostState(model.key, **({"max_hosts": max_hosts} if max_hosts else {}))
        self.use_prefix = use_prefix
        self.escalation = escalation
        self.explain = explain

    def apply(self, verdicts: Sequence[Verdict]) -> None:
        """Decide each verdict with its host context (in place): ``anomalous`` from the stage, the context
        score in ``context_score``, and the host features that made it anomalous first in the
        explanation. The rows are built flow by flow (the state remembers the prefix's flags, so no
        flow waits for the stage's decision on the one before) and scored in one pass."""
        if not verdicts:
            return
        m = self.model
        rows, hosts = context_rows(self.state, verdicts)
        score, tails = m.score_rows(rows, hosts, [service_of(v) for v in verdicts], self.use_prefix)
        beyond = rows[:, 0] > m.prefix_max if self.use_prefix else np.zeros(len(rows), dtype=bool)
        flagged = (score >= m.threshold) | beyond
        host_tails = tails[:, 1:]
        for i in np.flatnonzero(flagged | np.array([v.anomalous for v in verdicts])).tolist():
            v = verdicts[i]
            prefix_said = v.anomalous
            v.anomalous = bool(flagged[i])
            if v.anomalous:
                named: list[str] = []
                if self.explain:
                    ranked = np.argsort(-host_tails[i], kind="stable")
                    named = [FEATURES[j] for j in ranked[:3] if host_tails[i, j] >= 1.0]
                if not prefix_said:
                    v.detector = "context"
                v.explanation = named + [e for e in v.explanation if e not in named]
                v.host_alarms = self.state.alarm(hosts[i], sensor_millis(v.ts) / 1000, *self.escalation)
            else:  # the prefix alone flagged it, in an ordinary host context
                v.explanation = []
        for v, s in zip(verdicts, score.tolist(), strict=True):
            v.context_score = s


def decide_copies(model: ContextModel, prefix: Sequence[Verdict], use_prefix: bool = True) -> list[Verdict]:
    """Copies of prefix verdicts (in the order a sensor decides them) decided by a fresh stage: what
    ``dpack serve`` would make of them, the prefix verdicts themselves left as they were (an evaluation
    or a validation compares both)."""
    import dataclasses

    vs = [dataclasses.replace(v, explanation=list(v.explanation)) for v in prefix]
    ContextScorer(model, use_prefix=use_prefix).apply(vs)
    return vs


def host_levels(rows: np.ndarray, hosts: Sequence[str]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Each benign host's level of every ``SCALED`` count (99th percentile of its rows, at least 1), for
    the ``MAX_KNOWN_HOSTS`` busiest with ``HOST_LEVEL_MIN_ROWS`` rows or more, and the median host's."""
    h = np.asarray(hosts)
    names, counts = np.unique(h, return_counts=True)
    levels: dict[str, np.ndarray] = {}
    for name in names[np.argsort(-counts, kind="stable")][:MAX_KNOWN_HOSTS]:
        sel = h == name
        if sel.sum() >= HOST_LEVEL_MIN_ROWS:
            levels[str(name)] = np.maximum(np.percentile(rows[sel][:, SCALED], 99, axis=0), 1.0).astype(
                np.float32
            )
    typical = (
        np.median(np.stack(list(levels.values())), axis=0).astype(np.float32)
        if levels
        else np.maximum(np.percentile(rows[:, SCALED], 99, axis=0), 1.0).astype(np.float32)
    )
    return levels, np.maximum(typical, 1.0)


def repeat_levels(rows: np.ndarray, keys: Sequence[str], most: int) -> tuple[dict[str, float], float]:
    """Each key's benign level of repeats (99th percentile of ``host.same_service_60s``, at least 1) for
    the ``most`` busiest keys with ``SERVICE_LEVEL_MIN_ROWS`` flows or more, and the median key's."""
    kv = np.asarray(keys)
    names, counts = np.unique(kv, return_counts=True)
    out: dict[str, float] = {}
    for name in names[np.argsort(-counts, kind="stable")][:most]:
        sel = kv == name
        k = int(sel.sum())
        if k >= SERVICE_SMALL_ROWS:  # too few for a 99th percentile: their largest count, with headroom
            col = rows[sel, SAME_SERVICE]
            level = np.percentile(col, 99) if k >= SERVICE_LEVEL_MIN_ROWS else SMALL_HEADROOM * col.max()
            out[str(name)] = max(float(level), 1.0)
    if out:
        return out, max(float(np.median(list(out.values()))), 1.0)
    return out, max(float(np.percentile(rows[:, SAME_SERVICE], 99)), 1.0) if len(rows) else 1.0


def fit(
    rows: np.ndarray,
    hosts: Sequence[str],
    services: Sequence[str],
    calibration: np.ndarray,
    calibration_hosts: Sequence[str],
    calibration_services: Sequence[str],
    target_fpr: float,
    key: HostKey,
    provenance: dict[str, Any],
) -> ContextModel:
    """The stage from benign context rows (``rows``, ``hosts``: for the host levels and the tails;
    ``calibration``: held back, for the threshold at ``target_fpr``)."""
    if len(rows) < 100 or len(calibration) < 100:
        raise ValueError(
            "too few benign flows to fit the context stage (at least 100 each for tails and threshold)"
        )
    levels, typical = host_levels(rows, hosts)
    prefix_max = float(np.max(rows[:, 0]))
    svc, typical_svc = repeat_levels(rows, services, MAX_SERVICES)
    m = ContextModel(
        Tails([], [], 0), 1.0, prefix_max, key, COLUMNS, provenance, levels, typical, svc, typical_svc
    )
    m.tails = Tails.fit(m.relative(rows, hosts, services))
    s, _ = m.score_rows(calibration, calibration_hosts, calibration_services)
    beyond = calibration[:, 0] > prefix_max
    # the smallest threshold whose held-back false-positive rate (beyond-prefix flows included) is <= target
    allowed = int(math.floor(target_fpr * len(calibration))) - int(beyond.sum())
    cand = np.sort(s[~beyond])[::-1]
    thr = float(cand[allowed]) + 1e-6 if 0 <= allowed < len(cand) else float(cand[0]) + 1e-6
    m.threshold = max(thr, 1e-6)
    m.provenance = {
        **provenance,
        "target_fpr": target_fpr,
        "fit_rows": int(len(rows)),
        "calibration_rows": int(len(calibration)),
        "calibration_fpr": float(((s >= m.threshold) | beyond).mean()),
    }
    return m
