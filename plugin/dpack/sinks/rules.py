"""Suricata rules for flagged flows: a small ``Rule`` type that formats and parses back, the blocking policy
(escalation, allowlist, cap, expiry), persistent state (stable SIDs), and the rules file writer
(temporary file -> ``suricata -T`` -> atomic rename).

Safety: a rule is built only from validated values - addresses parsed by ``ipaddress``, integer ports
and SIDs, a fixed vocabulary for actions, protocols and messages, and metadata values that must match a
strict pattern (anything else is left out and counted). Every rule is parsed back and compared before it
is kept. Nothing from a packet or a peer is ever pasted into a rule as text.
"""

from __future__ import annotations

import fcntl
import ipaddress
import json
import logging
import os
import queue
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import DpackError, RulesError, one_line
from ..fileio import atomic_write_bytes
from ..verdict import Verdict
from .suricata import SuricataSocket

log = logging.getLogger(__name__)

ACTIONS = ("alert", "drop")
SCOPES = ("source", "flow")
PROTOS = ("ip", "tcp", "udp", "icmp")
MESSAGES = {
    "source": "dpack anomalous source",
    "flow": "dpack anomalous flow",
    "dataset": "dpack blocked source",
}
APPLY = ("rules", "dataset")
_DATASET_NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}")
LOCAL_SID_RANGE = (1_000_000, 1_999_999)  # reserved for local rules
MAX_ENTRIES = 100_000  # active entries at most (rules.max_entries)
# metadata key -> the only values it may carry
_META_PATTERNS = {
    "dpack_version": re.compile(r"[0-9][0-9A-Za-z.+-]{0,30}"),
    "model": re.compile(r"[A-Za-z0-9._-]{1,64}@[0-9a-f]{12}"),
    "score": re.compile(r"[0-9]+(\.[0-9]+)?(e[-+][0-9]+)?"),
    "flows": re.compile(r"[0-9]{1,9}"),
    "zeek_uid": re.compile(r"C[A-Za-z0-9]{5,30}"),
    "community_id": re.compile(r"1:[A-Za-z0-9+/]{27}="),
    "expires": re.compile(r"[0-9]{10}"),
}


def _addr(text: str) -> str:
    """The canonical text of an address, for a rule; a scope id (``fe80::1%eth0``) is no address a
    Suricata rule can hold."""
    try:
        a = ipaddress.ip_address(text)
    except (ValueError, TypeError):
        raise RulesError(f"not an IP address: {one_line(repr(text), 60)}") from None
    if getattr(a, "scope_id", None) is not None:
        raise RulesError(f"address with a scope id: {one_line(repr(text), 60)}")
    return str(a)


def _port(p: int | str) -> str:
    if p == "any":
        return "any"
    if type(p) is not int or not 0 <= p <= 65535:
        raise RulesError(f"not a port: {str(p)[:20]!r}")
    return str(p)


@dataclass(frozen=True)
class Rule:
    action: str
    proto: str
    src: str
    sport: str
    dst: str
    dport: str
    msg: str
    sid: int
    rev: int = 1
    established: bool = False  # flow:established, so an ongoing flow is cut (not only its first packet)
    metadata: tuple[tuple[str, str], ...] = ()
    dataset: str = ""  # match ip.src against this Suricata dataset (type ip) instead of an address

    def __post_init__(self) -> None:
        if self.action not in ACTIONS or self.proto not in PROTOS or self.msg not in MESSAGES.values():
            raise RulesError(f"rule outside dpack's vocabulary: {self.action} {self.proto} {self.msg!r}")
        for a in (self.src, self.dst):
            if a != "any" and _addr(a) != a:
                raise RulesError(f"address not in canonical form: {a[:50]!r}")
        for p in (self.sport, self.dport):
            if p != "any" and (not p.isdigit() or int(p) > 65535):
                raise RulesError(f"bad port {p[:10]!r}")
        if not LOCAL_SID_RANGE[0] <= self.sid <= LOCAL_SID_RANGE[1] or not 1 <= self.rev < 1_000_000:
            raise RulesError(f"sid {self.sid} / rev {self.rev} out of range")
        if self.dataset and not _DATASET_NAME.fullmatch(self.dataset):
            raise RulesError(f"bad dataset name {self.dataset[:40]!r}")
        for k, v in self.metadata:
            pat = _META_PATTERNS.get(k)
            if pat is None or not pat.fullmatch(v):
                raise RulesError(f"metadata {k[:20]!r} has a value outside its pattern")

    def format(self) -> str:
        opts = [f'msg:"{self.msg}"']
        if self.established:
            opts.append("flow:established")
        if self.dataset:
            opts.append(f"ip.src; dataset:isset,{self.dataset}")
        track = "by_src" if self.src != "any" or self.dataset else "by_dst"
        opts.append(f"threshold:type limit, track {track}, count 1, seconds 60")
        if self.metadata:
            opts.append("metadata:" + ", ".join(f"{k} {v}" for k, v in self.metadata))
        opts += ["classtype:misc-attack", f"sid:{self.sid}", f"rev:{self.rev}"]
        return (
            f"{self.action} {self.proto} {self.src} {self.sport} -> {self.dst} {self.dport} "
            f"({'; '.join(opts)};)"
        )

    _RE = re.compile(
        r"(?P<action>alert|drop) (?P<proto>ip|tcp|udp|icmp) (?P<src>[0-9A-Fa-f.:]+|any) (?P<sport>\d+|any) -> "
        r"(?P<dst>[0-9A-Fa-f.:]+|any) (?P<dport>\d+|any) \(msg:\"(?P<msg>[a-z ]+)\"; "
        r"(?P<est>flow:established; )?(ip\.src; dataset:isset,(?P<ds>[a-z0-9_-]+); )?"
        r"threshold:type limit, track by_(src|dst), count 1, seconds 60; "
        r"(metadata:(?P<meta>[^;\"()]*); )?classtype:misc-attack; sid:(?P<sid>\d+); rev:(?P<rev>\d+);\)"
    )

    @classmethod
    def parse(cls, line: str) -> Rule:
        """Parse a rule this module wrote (and nothing else)."""
        m = cls._RE.fullmatch(line.strip())
        if m is None:
            raise RulesError(f"not a dpack rule: {line[:80]!r}")
        meta: tuple[tuple[str, str], ...] = ()
        if m["meta"]:
            pairs = [p.strip().split(" ", 1) for p in m["meta"].split(",")]
            if any(len(p) != 2 for p in pairs):
                raise RulesError(f"bad metadata in {line[:80]!r}")
            meta = tuple((k, v) for k, v in pairs)
        return cls(
            m["action"],
            m["proto"],
            m["src"],
            m["sport"],
            m["dst"],
            m["dport"],
            m["msg"],
            int(m["sid"]),
            int(m["rev"]),
            bool(m["est"]),
            meta,
            m["ds"] or "",
        )


def metadata_for(
    v: Verdict, flows: int | None = None, expires: float | None = None
) -> tuple[tuple[str, str], ...]:
    """The metadata pairs for a verdict; values that do not fit their pattern are left out."""
    cand = [
        ("dpack_version", __version__),
        ("model", v.model),
        ("score", f"{v.score:.6g}"),
        ("zeek_uid", v.uid),
        ("community_id", v.community_id),
    ]
    if flows is not None:
        cand.append(("flows", str(flows)))
    if expires is not None:
        cand.append(("expires", str(int(expires))))
    out = []
    for k, val in cand:
        if val and _META_PATTERNS[k].fullmatch(val):
            out.append((k, val))
        elif val:
            log.warning("rule metadata %s left out: value does not fit its pattern", k)
    return tuple(out)


# --- policy and state ----------------------------------------------------------------------------------


@dataclass
class Policy:
    """What gets blocked, when, and for how long (the ``rules:`` section of the config)."""

    mode: str = "alert"  # alert | drop; a cautious SOC starts with alert
    scope: str = "source"  # source: the attacker's address; flow: the 5-tuple
    # Escalation: a source is blocked after `threshold_flows` anomalous flows within `window` seconds.
    # At the shipped model's 0.55% false-positive rate, a benign host that opens 100 flows a minute reaches
    # 5 false alarms in a minute with probability ~4e-4; every lab-dev attack family exceeds 5 flows a minute.
    threshold_flows: int = 5
    window: float = 60.0
    ttl: float = 3600.0  # seconds an entry stays active
    max_entries: int = 1000  # cap on active entries (oldest expire first when it is reached)
    allowlist: list[str] = field(default_factory=list)  # CIDRs never blocked
    require_handshake: bool = False  # only block sources whose TCP handshake completed (spoof-resistant)
    sid_first: int = 1_900_000
    sid_last: int = 1_909_999
    # How a live Suricata learns about entries: "rules" (rules file + reload over the unix socket) or
    # "dataset" (one static rule matching ip.src against `dataset_name`, a dataset of type ip defined in
    # suricata.yaml; entries added and removed over the socket, effective on the next packet, no reload).
    apply: str = "rules"
    dataset_name: str = "dpack-block"

    def __post_init__(self) -> None:
        if self.mode not in ACTIONS or self.scope not in SCOPES:
            raise RulesError(
                f"rules.mode must be alert|drop and rules.scope source|flow, got {self.mode}/{self.scope}"
            )
        if not (LOCAL_SID_RANGE[0] <= self.sid_first <= self.sid_last <= LOCAL_SID_RANGE[1]):
            raise RulesError("rules.sid_first..sid_last must lie inside 1000000-1999999 (local rules)")
        if self.apply not in APPLY or not _DATASET_NAME.fullmatch(self.dataset_name):
            raise RulesError(
                "rules.apply must be rules|dataset and rules.dataset_name a short lowercase name"
            )
        if self.apply == "dataset" and self.scope != "source":
            raise RulesError("rules.apply: dataset blocks sources; it needs rules.scope: source")
        if not (
            1 <= self.threshold_flows <= 1_000_000
            and 0 < self.window <= 7 * 86400
            and 0 < self.ttl <= 366 * 86400
            and 1 <= self.max_entries <= MAX_ENTRIES
        ):  # (comparisons are False for NaN, so NaN is refused too)
            raise RulesError(
                "rules.threshold_flows (1-1000000), window (up to 7 days), ttl (up to 366 days) and "
                f"max_entries (1-{MAX_ENTRIES}) must be positive and in range"
            )
        try:
            self.networks = [ipaddress.ip_network(c, strict=False) for c in self.allowlist]
        except ValueError as err:
            raise RulesError(f"rules.allowlist: {err}") from None

    def allowed(self, addr: str) -> bool:
        a = ipaddress.ip_address(_addr(addr))
        return any(a in n for n in self.networks)


@dataclass
class Entry:
    key: str  # "src:ADDR" or "flow:PROTO:SRC:SPORT:DST:DPORT"
    sid: int
    rev: int
    rule: str
    created: float
    expires: float


@dataclass
class State:
    """Active entries and SID assignments; persisted atomically as JSON."""

    entries: dict[str, Entry] = field(default_factory=dict)
    sids: dict[str, int] = field(default_factory=dict)  # key -> sid, kept after expiry (stable SIDs)
    revs: dict[str, int] = field(default_factory=dict)
    applied: list[str] = field(default_factory=list)  # addresses in Suricata's dataset (apply: dataset)

    @classmethod
    def load(cls, path: Path) -> State:
        """Read the state file; a corrupt one is moved aside (``.corrupt-<time>``) and reported, not reset
        silently."""
        if not path.exists():
            return cls()
        try:
            raw = json.loads(path.read_text())
            st = cls(
                # in expiry order, which RuleBook keeps (the first entry is the next to expire)
                {k: Entry(**e) for k, e in sorted(raw["entries"].items(), key=lambda kv: kv[1]["expires"])},
                {k: int(v) for k, v in raw["sids"].items()},
                {k: int(v) for k, v in raw.get("revs", {}).items()},
                [_addr(a) for a in raw.get("applied", [])],
            )
            for e in st.entries.values():
                Rule.parse(e.rule)
            return st
        except (ValueError, KeyError, TypeError, AttributeError, RulesError) as err:
            backup = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
            shutil.copy2(path, backup)
            raise RulesError(
                f"{path}: rules state is damaged ({type(err).__name__}); a copy is at {backup}; "
                "fix or remove it to start with no active rules"
            ) from None

    def save(self, path: Path) -> None:
        data = {
            "entries": {k: asdict(e) for k, e in self.entries.items()},
            "sids": self.sids,
            "revs": self.revs,
            "applied": self.applied,
        }
        atomic_write_bytes(
            path, (json.dumps(data, indent=1, sort_keys=True) + "\n").encode(), mode=SHARED_MODE
        )


# --- the engine -----------------------------------------------------------------------------------------

MAX_SOURCES = 100_000  # sources whose recent anomalous flows the escalation remembers
# Rules and state files: readable by the group (give Suricata's user that group), not by everyone.
SHARED_MODE = 0o640


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def _proto(v: Verdict) -> str:
    return v.proto if v.proto in ("tcp", "udp") else ("icmp" if v.proto in ("icmp", "icmp6") else "ip")


class RuleBook:
    """Turns anomalous verdicts into rules under a policy; keeps state; writes and validates the file."""

    def __init__(
        self,
        policy: Policy,
        rules_path: str | os.PathLike[str],
        state_path: str | os.PathLike[str] | None = None,
        suricata: str | None = None,
        suricata_config: str | None = None,
    ) -> None:
        self.policy = policy
        self.path = Path(rules_path)
        self.state_path = Path(state_path) if state_path else Path(f"{self.path}.state.json")
        self.state = State.load(self.state_path)
        self._stamp = _stamp(self.state_path)  # the state file as this book last read or wrote it
        self.suricata = suricata if suricata is not None else shutil.which("suricata")
        self.suricata_config = suricata_config
        # Escalation memory: the recent anomalous flows' times per source, least recently flagged first.
        # Bounded: a flood of ever new (spoofed) sources forgets the oldest, counted in ``forgotten``.
        self.recent: OrderedDict[str, deque[float]] = OrderedDict()
        self.max_sources = MAX_SOURCES
        self._sids_used = set(self.state.sids.values())
        self._sid_cursor = policy.sid_first
        self.stats = {
            "forgotten": 0,
            "added": 0,
            "refreshed": 0,
            "expired": 0,
            "allowlisted": 0,
            "unverified": 0,
            "capped": 0,
            "invalid": 0,
        }

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the rule state's lock (``<state>.lock``, an advisory ``flock``) and bring this book up to
        date with the state file. Every writer of the state takes it - ``dpack serve``'s rule writer for
        each update, ``dpack rules`` for each command - so a change one of them made is never written
        over by the other (before: ``dpack rules remove`` said removed, and serve's next write put the
        entry back)."""
        fd = os.open(f"{self.state_path}.lock", os.O_RDWR | os.O_CREAT, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._refresh()
            yield
        finally:
            os.close(fd)  # (closing releases the lock)

    def _refresh(self) -> None:
        """Re-read the state file if someone else wrote it since this book did. Sources whose entries were
        removed there (not expired) lose their escalation memory: only new flows count against them."""
        stamp = _stamp(self.state_path)
        if stamp == self._stamp:
            return
        before = self.state.entries
        self.state = State.load(self.state_path)
        self._stamp = stamp
        self._sids_used = set(self.state.sids.values())
        now = time.time()
        for key, e in before.items():
            if key not in self.state.entries and e.expires > now and key.startswith("src:"):
                self.recent.pop(key[len("src:") :], None)

    # which flows lead to an entry
    def observe(
        self,
        verdicts: Iterable[Verdict],
        handshake_ok: Sequence[bool] | None = None,
        now: float | None = None,
    ) -> list[str]:
        """Account anomalous verdicts; returns the keys added or refreshed. The escalation window runs on
        the flows' own times (``ts``, so a capture replays as it happened); entries live ``ttl`` seconds
        from ``now`` (default: the wall clock)."""
        changed = []
        wall = time.time() if now is None else now
        for i, v in enumerate(verdicts):
            if not v.anomalous:
                continue
            try:
                _addr(v.src), _addr(v.dst)
            except RulesError as err:
                self.stats["invalid"] += 1
                log.warning("verdict skipped for rules: %s", err)
                continue
            if self.policy.allowed(v.src):
                self.stats["allowlisted"] += 1
                continue
            ok = v.handshake if handshake_ok is None else handshake_ok[i]
            if self.policy.require_handshake and not ok:
                self.stats["unverified"] += 1
                continue
            t = v.ts
            if self.policy.scope == "flow":
                key = f"flow:{_proto(v)}:{v.src}:{v.sport}:{v.dst}:{v.dport}"
                count = 1
            elif v.host_alarms is not None:  # counted by the host-context stage, in its host state
                key = f"src:{v.src}"
                count = v.host_alarms
                if count < self.policy.threshold_flows:
                    continue
            else:
                key = f"src:{v.src}"
                q = self.recent.get(v.src)
                if q is None:
                    q = self.recent[v.src] = deque()
                    if len(self.recent) > self.max_sources:
                        self.recent.popitem(last=False)
                        self.stats["forgotten"] += 1
                else:
                    self.recent.move_to_end(v.src)
                q.append(t)
                while q and t - q[0] > self.policy.window:
                    q.popleft()
                while len(q) > self.policy.threshold_flows:  # more than enough to decide: bounded
                    q.popleft()
                count = len(q)
                if count < self.policy.threshold_flows:
                    continue
            try:
                put = self._put(key, v, wall, count)
            except RulesError as err:  # this verdict makes no rule; the others still do
                self.stats["invalid"] += 1
                log.warning("no rule for %s: %s", one_line(key, 120), err)
                continue
            if put:
                changed.append(key)
        return changed

    def _put(self, key: str, v: Verdict, now: float, flows: int) -> bool:
        expires = now + self.policy.ttl
        existing = self.state.entries.get(key)
        if existing is not None and existing.expires - now > self.policy.ttl / 2:
            return False  # active and far from expiry: nothing to change
        if existing is None and len(self.state.entries) >= self.policy.max_entries:
            # at the cap, before a SID is taken: the leaving entry's SID is free for the new one. Entries
            # are kept in expiry order (see the re-insert below), so the first expires first.
            del self.state.entries[next(iter(self.state.entries))]
            self.stats["capped"] += 1
        sid = self.state.sids.get(key) or self._new_sid()
        rev = self.state.revs.get(key, 0) + 1
        p = self.policy
        if p.scope == "flow":
            proto = _proto(v)
            ports = (str(v.sport), str(v.dport)) if proto in ("tcp", "udp") else ("any", "any")
            rule = Rule(
                p.mode,
                proto,
                _addr(v.src),
                ports[0],
                _addr(v.dst),
                ports[1],
                MESSAGES["flow"],
                sid,
                rev,
                established=proto in ("tcp", "udp"),
                metadata=metadata_for(v, None, expires),
            )
        else:
            rule = Rule(
                p.mode,
                "ip",
                _addr(v.src),
                "any",
                "any",
                "any",
                MESSAGES["source"],
                sid,
                rev,
                metadata=metadata_for(v, flows, expires),
            )
        text = rule.format()
        if Rule.parse(text) != rule:  # re-parse before keeping it
            raise RulesError(f"rule for {key} does not parse back")
        self.state.entries.pop(key, None)  # re-inserted last: the latest expiry
        self.state.entries[key] = Entry(key, sid, rev, text, now, expires)
        self.state.sids[key], self.state.revs[key] = sid, rev
        self._sids_used.add(sid)
        self.stats["refreshed" if existing else "added"] += 1
        return True

    def _new_sid(self) -> int:
        """The lowest free SID at or after a cursor (amortised O(1): 40,000 new flow rules used to scan the
        range for each), else the SID of the key that left longest ago."""
        used, last = self._sids_used, self.policy.sid_last  # sid_last: the dataset rule
        if self._sid_cursor < self.policy.sid_first:
            self._sid_cursor = self.policy.sid_first
        while self._sid_cursor < last and self._sid_cursor in used:
            self._sid_cursor += 1
        if self._sid_cursor < last:
            return self._sid_cursor
        # range exhausted: reuse the SID of the longest-expired key
        stale = next((k for k in self.state.sids if k not in self.state.entries), None)
        if stale is None:
            raise RulesError("no free SID in rules.sid_first..sid_last; widen the range or lower max_entries")
        sid = self.state.sids.pop(stale)
        self.state.revs.pop(stale, None)
        return sid

    def expire(self, now: float) -> list[str]:
        gone = [k for k, e in self.state.entries.items() if e.expires <= now]
        for k in gone:
            del self.state.entries[k]
        self.stats["expired"] += len(gone)
        return gone

    def remove(self, addr: str) -> list[str]:
        a = _addr(addr)
        gone = [k for k in self.state.entries if k == f"src:{a}" or k.split(":")[2:3] == [a]]
        for k in gone:
            del self.state.entries[k]
        return gone

    # the file
    def text(self) -> str:
        head = (
            f"# dpack {__version__} rules: written {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}, "
            f"{len(self.state.entries)} active entries. Managed by dpack; edits are overwritten.\n"
        )
        if self.policy.apply == "dataset":
            return head + self.dataset_rule().format() + "\n"
        body = "".join(e.rule + "\n" for e in sorted(self.state.entries.values(), key=lambda e: e.sid))
        return head + body

    def dataset_rule(self) -> Rule:
        """The one static rule of ``apply: dataset`` (the last SID of the range is reserved for it)."""
        p = self.policy
        return Rule(
            p.mode,
            "ip",
            "any",
            "any",
            "any",
            "any",
            MESSAGES["dataset"],
            p.sid_last,
            metadata=(("dpack_version", __version__),),
            dataset=p.dataset_name,
        )

    def apply(self, sock: SuricataSocket) -> str:
        """Make a running Suricata use the current entries; raises SuricataError (the file stays written,
        the caller retries). ``rules``: reload and check the ruleset stats. ``dataset``: add and remove the
        difference between the active sources and what Suricata holds, then save the state."""
        if self.policy.apply == "rules":
            stats = sock.reload_rules()
            return f"reloaded: {stats.get('rules_loaded')} rules loaded, {stats.get('rules_failed')} failed"
        want = {k.split(":", 1)[1] for k in self.state.entries if k.startswith("src:")}
        have = set(self.state.applied)
        try:
            for a in sorted(want - have):
                sock.dataset("add", self.policy.dataset_name, a)
                have.add(a)
            for a in sorted(have - want):
                sock.dataset("remove", self.policy.dataset_name, a)
                have.discard(a)
        finally:
            self.state.applied = sorted(have)
            self.state.save(self.state_path)
        return f"dataset {self.policy.dataset_name}: {len(have)} addresses"

    def validate(self, path: Path) -> None:
        """``suricata -T`` on a rules file; raises RulesError with Suricata's first error line."""
        if not self.suricata:
            raise RulesError("suricata not found; cannot validate rules (install Suricata 7)")
        with tempfile.TemporaryDirectory(prefix="dpack-suricata-") as logdir:
            cmd = [self.suricata, "-T", "-S", str(path), "-l", logdir]
            if self.suricata_config:
                cmd[1:1] = ["-c", self.suricata_config]
            try:
                r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
            except (OSError, subprocess.TimeoutExpired) as err:
                raise RulesError(f"suricata -T could not run: {err}") from None
        if r.returncode != 0:
            lines = [ln for ln in (r.stderr + r.stdout).splitlines() if "Error" in ln or "error" in ln]
            raise RulesError(f"suricata -T refused {path.name}: {(lines or ['(no error line)'])[0][:300]}")

    def write(self, validate: bool = True) -> Path:
        """Write the rules file: a temporary file beside it, ``suricata -T``, then an atomic rename; the
        state is saved after the file, so a crash in between leaves an older file and a newer state, which
        the next write reconciles."""
        atomic_write_bytes(
            self.path, self.text().encode(), check=self.validate if validate else None, mode=SHARED_MODE
        )
        self.state.save(self.state_path)
        self._stamp = _stamp(self.state_path)
        return self.path


def book_from_config(cfg: Any, path: str | None = None) -> RuleBook:
    """The RuleBook the config describes (``rules:`` section); ``path`` overrides ``rules.file``."""
    path = path or cfg.rules_setting("file")
    if not path:
        raise RulesError("no rules file: set rules.file in the config")
    return RuleBook(
        cfg.rules_policy(),
        path,
        cfg.rules_setting("state"),
        suricata=cfg.rules_setting("suricata"),
        suricata_config=cfg.rules_setting("suricata_config"),
    )


class RulesWorker:
    """The live side of rule writing for ``dpack serve``: anomalous verdicts go through a bounded queue to
    one thread that updates the rule book, writes and validates the file (``suricata -T`` takes about a
    second, so never on the scorer's loop), applies it over the unix socket, expires entries every
    ``tick`` seconds, and retries a failed apply at each tick."""

    def __init__(
        self, book: RuleBook, sock: SuricataSocket | None, tick: float = 30.0, queue_size: int = 100_000
    ) -> None:
        self.book, self.sock, self.tick = book, sock, tick
        self.q: queue.Queue[list[Verdict] | None] = queue.Queue(maxsize=queue_size)
        self.counts = {
            "rules_writes": 0,
            "rules_write_failures": 0,
            "rules_applies": 0,
            "rules_apply_failures": 0,
            "rules_dropped": 0,
            "rules_errors": 0,
        }
        self.failed = ""
        self.pending_apply = False
        self.thread = threading.Thread(target=self._run, name="dpack-rules", daemon=True)
        self.thread.start()

    def __call__(self, verdicts: Sequence[Verdict], nodes: Sequence[str]) -> None:
        try:
            self.q.put_nowait(list(verdicts))
        except queue.Full:
            self.counts["rules_dropped"] += len(verdicts)
            log.error("rules queue full: %d anomalous verdict(s) not considered for rules", len(verdicts))

    def figures(self) -> dict[str, int]:
        """The counters, and the size of the rule book's bounded state (read without the lock: sizes
        of dicts, good enough for a metric)."""
        st = self.book.stats
        return {
            **self.counts,
            "rules_active": len(self.book.state.entries),
            "rules_sources_tracked": len(self.book.recent),
            "rules_sources_forgotten": st["forgotten"],
            "rules_verdicts_invalid": st["invalid"],
        }

    def close(self, timeout: float = 30.0) -> None:
        self.q.put(None)
        self.thread.join(timeout)

    def _run(self) -> None:
        """Until ``close``: one queued batch (or a tick) at a time. Nothing one batch holds can stop the
        thread: an unexpected error is counted (``rules_errors``), logged once a minute at most, and the
        next batch is taken; ``failed`` keeps the last one for the service's health check."""
        next_tick = time.monotonic() + self.tick
        last_log = -1e9
        while True:
            try:
                item = self.q.get(timeout=max(0.0, next_tick - time.monotonic()))
            except queue.Empty:
                item = []
            if item is None:
                return
            try:
                next_tick = self._step(item, next_tick)
            except Exception as err:
                self.counts["rules_errors"] += 1
                self.failed = f"{type(err).__name__}: {one_line(err, 200)}"
                if time.monotonic() - last_log >= 60:
                    last_log = time.monotonic()
                    log.exception("rule writer: a batch of %d verdict(s) failed; going on", len(item))

    def _step(self, item: list[Verdict], next_tick: float) -> float:
        with self.book.locked():
            changed = bool(self.book.observe(item)) if item else False
            if time.monotonic() >= next_tick:
                next_tick = time.monotonic() + self.tick
                changed |= bool(self.book.expire(time.time()))
            if changed:
                try:
                    self.book.write(validate=self.book.suricata is not None)
                    self.counts["rules_writes"] += 1
                    self.pending_apply = True
                except (RulesError, OSError) as err:
                    self.counts["rules_write_failures"] += 1
                    log.error("rules not written (the previous file stays): %s", err)
            if self.pending_apply and self.sock is not None:
                try:
                    log.info("Suricata: %s", self.book.apply(self.sock))
                    self.counts["rules_applies"] += 1
                    self.pending_apply = False
                except (DpackError, OSError) as err:
                    self.counts["rules_apply_failures"] += 1
                    log.error("rules written but not applied (retry in %.0f s): %s", self.tick, err)
            elif self.pending_apply:
                self.pending_apply = False  # no socket configured: Suricata reads the file when it reloads
        return next_tick
