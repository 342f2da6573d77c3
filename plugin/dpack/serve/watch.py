"""The day-one guard of ``dpack serve``: whether the model fits this site at all.

**Day-one guard.** The shipped model learned one lab; on a network it has never seen it can flag most
flows of most hosts (86.7% of the benign flows of ``tools/ordinary_site.py``). While the serving model is
the packaged default (``serve.guard: auto``; ``on`` for any model, ``off`` never), the guard looks at the
last ``serve.guard_window`` prefix verdicts: when more than ``serve.guard_hosts_share`` of their
originators, and at least ``serve.guard_min_hosts`` of them, had a flow flagged, the model does not fit
this site. Until it has seen a quarter of a window (its warm-up), and while the model does not fit (until
the share falls under half the limit): every verdict still goes to Zeek and into
``dpack.log`` (``anomalous`` as the model said), but with the model named ``guarded:NAME`` - Zeek raises
no notice for it - and no verdict reaches the SIEM feed or the rule writer. Said once when it engages,
loudly: an error in the log, the gauge ``guard_active``, a Zeek reporter warning (``DPack::scorer_status``).
An attack from a few hosts (a flood, a scan, a brute force) leaves most originators unflagged and does
not engage it; a model that fits the site flags a few of them.

Score drift is watched by ``prefix/drift.py`` (``DriftWatch``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

from ..verdict import Verdict

GUARD_PREFIX = "guarded:"


class DayOneGuard:
    """Whether the model fits this site at all, from the share of originators it flags.

    ``pending`` for the first ``warmup`` verdicts (held: no benign host is paged about or blocked before
    the guard has seen enough to judge), then checked on every batch over the last ``window``:
    ``engaged`` while the model does not fit (notices, SIEM alerts and rules held)."""

    def __init__(self, window: int = 2000, share: float = 0.25, min_hosts: int = 10, warmup: int = 0) -> None:
        self.window, self.share, self.min_hosts = window, share, min_hosts
        self.warmup = warmup or window // 4
        self.recent: deque[tuple[str, bool]] = deque()
        # per originator in ``recent``: [its verdicts, its flagged ones]; kept as verdicts come and go, so
        # a batch costs its own length, not the window's (the guard is on every shipped-model serve)
        self.hosts: dict[str, list[int]] = {}
        self.pending = True
        self.engaged = False
        self.flagged_share = 0.0
        self.flagged_hosts = 0
        self.seen = 0

    def add(self, verdicts: Sequence[Verdict]) -> str | None:
        """What changed with these verdicts: ``"on"`` (engaged), ``"off"`` (lifted), ``"fits"`` (the
        warm-up ended and the model fits), or None."""
        recent, hosts = self.recent, self.hosts
        for v in verdicts:
            flagged = bool(v.anomalous)
            recent.append((v.src, flagged))
            h = hosts.get(v.src)
            if h is None:
                h = hosts[v.src] = [0, 0]
            h[0] += 1
            h[1] += flagged
            self.flagged_hosts += flagged and h[1] == 1
            if len(recent) > self.window:
                src, was = recent.popleft()
                h = hosts[src]
                h[0] -= 1
                h[1] -= was
                self.flagged_hosts -= was and h[1] == 0
                if h[0] == 0:
                    del hosts[src]
        self.seen += len(verdicts)
        if self.seen < self.warmup:
            return None
        self.flagged_share = self.flagged_hosts / max(1, len(hosts))
        misfit = self.flagged_share > self.share and self.flagged_hosts >= self.min_hosts
        was_pending, self.pending = self.pending, False
        if misfit and not self.engaged:
            self.engaged = True
            return "on"
        if self.engaged and self.flagged_share < self.share / 2:
            self.engaged = False
            return "off"
        return "fits" if was_pending and not self.engaged else None

    def describe(self, model: str) -> str:
        return (
            f"model {model} flags {self.flagged_share:.0%} of this site's originators ({self.flagged_hosts} "
            f"hosts; guard at {self.share:.0%}): it does not fit this network. Notices, SIEM alerts and rules "
            "are held; verdicts still go to dpack.log (model guarded:...). Learn this site: learn.enabled: true"
        )
