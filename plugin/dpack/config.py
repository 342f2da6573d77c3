"""One typed configuration object. Precedence: defaults -> YAML file -> environment -> command line.

YAML layout (every key optional)::

    model: models/dpack-default.pt   # relative paths are relative to the config file
    export:                          # what the Zeek side sends; a model that disagrees is refused
      packets: 3
      bytes: 80
      policy: payload                # first | payload
    scoring:
      batch_size: 4096
      explain: anomalous             # anomalous | all | none
      top_k: 3
      workers: 0                     # processes for dpack score: 0 = one per CPU core (at most 8)
      cache_size: 16384              # recent distinct inputs whose score is remembered; 0 = off

    flows:                           # Zeek's connection timeouts (seconds); set them as your Zeek has them
      tcp_timeout: 300               # tcp_inactivity_timeout
      udp_timeout: 60                # udp_inactivity_timeout
      icmp_timeout: 60               # icmp_inactivity_timeout
      other_timeout: 60              # unknown_ip_inactivity_timeout
      dns_timeout: 10                # dns_session_timeout

    zeek:                            # dpack serve: how to reach Zeek
      url: ws://127.0.0.1:27759/v1/messages/json
      transport: websocket           # websocket | broker
      topic: dpack/samples
    detectors:                       # dpack serve: which detectors run (see DetectorsConfig)
      prefix: true                   # D-PACK on the first packets
      records_model: ""              # flow-record autoencoder (dpack train --detector records)
      classifier_model: ""           # CNN-BiLSTM category (dpack train --detector classifier)
    serve:                           # dpack serve: queues, outputs, endpoints (see ServeConfig)
      batch_size: 256
      max_delay_ms: 0.0
      workers: 0                     # scoring processes: 0 = in the serving process
      alerts: dpack-alerts.jsonl
      metrics_port: 9477

Environment: ``DPACK_MODEL``, and ``DPACK_<SECTION>_<KEY>`` for the others (``DPACK_EXPORT_PACKETS=3``,
``DPACK_SERVE_METRICS_PORT=0``).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError, one_line
from .fileio import open_regular
from .traffic.encode import (
    DEFAULT_BYTES,
    DEFAULT_MAX_WAIT,
    DEFAULT_PACKETS,
    DEFAULT_POLICY,
    POLICIES,
    PrefixSpec,
)
from .traffic.flows import FlowRules
from .verdict import EXPLAIN_MODES

DEFAULT_MODEL_NAME = "dpack-default.pt"


@dataclass
class ExportConfig:
    packets: int = DEFAULT_PACKETS
    bytes: int = DEFAULT_BYTES
    policy: str = DEFAULT_POLICY
    max_wait: float = DEFAULT_MAX_WAIT

    def spec(self) -> PrefixSpec:
        return PrefixSpec(self.packets, self.bytes, self.policy, max_wait=self.max_wait)


@dataclass
class FlowsConfig:
    """``flows:``: ``flows.FlowRules``, Zeek's connection timeouts, and the table's cap."""

    tcp_timeout: float = FlowRules.tcp_timeout
    udp_timeout: float = FlowRules.udp_timeout
    icmp_timeout: float = FlowRules.icmp_timeout
    other_timeout: float = FlowRules.other_timeout
    dns_timeout: float = FlowRules.dns_timeout
    max_flows: int = FlowRules.max_flows  # flows held at once (per dpack score process)

    def rules(self) -> FlowRules:
        return FlowRules(**dataclasses.asdict(self))


@dataclass
class ScoringConfig:
    batch_size: int = 4096
    explain: str = "anomalous"
    top_k: int = 3
    workers: int = 0  # dpack score: processes, each scoring a shard of the flows; 0 = one per core (<= 8)
    cache_size: int = 16_384  # Scorer's LRU of distinct inputs -> (score, explanation); 0 = off

    def processes(self) -> int:
        return self.workers or min(8, usable_cores())


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, where the platform tells)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@dataclass
class ZeekConfig:
    """How ``dpack serve`` reaches Zeek."""

    # Zeek's WebSocket API (JSON v1); 27759 is the port zeekctl's WebSocket listener uses.
    url: str = "ws://127.0.0.1:27759/v1/messages/json"
    transport: str = "websocket"  # websocket | broker (native, Zeek's own Python bindings)
    # Topic (prefix) to subscribe to: "dpack/samples" takes every shard, "dpack/samples/1" one shard.
    topic: str = "dpack/samples"
    # Reconnect backoff doubles from 0.2 s up to this many seconds.
    reconnect_max: float = 30.0
    # WebSocket keepalive: a ping every this many seconds, and the link is down if the pong takes longer.
    keepalive: float = 20.0


@dataclass
class ServeConfig:
    """The live scorer's queues, outputs and operational endpoints."""

    batch_size: int = 256  # flows per model call at most
    # A partial batch is scored this long after its first flow arrived. 0: at once - Zeek batches already
    # (DPack::batch_interval), and flows arriving while a batch is scored make the next one fuller;
    # bench_live at 5,000 flows/s: p50 6.0-6.4 -> 4.9-5.2 ms against 1.0.
    max_delay_ms: float = 0.0
    queue_size: int = 65536  # flows waiting to be scored; beyond it new flows are dropped and counted
    # Scoring processes: 0 = score in the serving process (one core); N = N worker processes, messages
    # dealt round-robin (each with its own queue of queue_size flows). See serve/workers.py.
    workers: int = 0
    outbox_size: int = 65536  # verdicts waiting for a Zeek connection; beyond it the oldest are dropped
    alerts: str = "dpack-alerts.jsonl"  # SIEM feed (ECS JSON lines); "" for none
    alerts_all: bool = False  # also write non-anomalous verdicts (event.kind "event")
    metrics_address: str = "127.0.0.1"
    metrics_port: int = 9477  # Prometheus text format; 0 for none
    log_interval: float = 60.0  # seconds between operational log lines
    watch: bool = True  # reload the model and this file when they change
    # day-one guard (serve/watch.py): auto = while serving the packaged default model; on; off
    guard: str = "auto"
    guard_window: int = 2000  # prefix verdicts it looks at
    guard_hosts_share: float = (
        0.25  # originators with a flagged flow above this share: the model does not fit
    )
    guard_min_hosts: int = 10  # and at least this many of them
    drift_window: int = 2000  # unflagged flows of a service per drift check
    drift_psi: float = 0.25  # population stability index above which a service has drifted


@dataclass
class DetectorsConfig:
    """Which detectors ``dpack serve`` runs (see ``records.scorer``). Model paths are relative to the
    config file; "" turns a record detector off."""

    prefix: bool = True  # D-PACK on the first packets (model: the top-level ``model``)
    records_model: str = ""  # flow-record autoencoder on connection summaries (``DPack::connections``)
    classifier_model: str = ""  # CNN-BiLSTM: names the category of connections
    context: bool = True  # the model's host-context stage, when its file has one (off: the prefix alone)
    context_max_hosts: int = 100_000  # hosts whose recent flows are kept (least recently seen forgotten)


@dataclass
class LearnConfig:
    """``learn:``: learning mode of ``dpack serve`` (serve/learning.py)."""

    enabled: bool = False
    flows: int = 20_000  # recorded flows that end the learning period
    duration: float = 0.0  # seconds that end it (0: only ``flows``)
    dir: str = "dpack-learn"  # where the recording and the learned model go (relative: to the config file)
    max_mb: int = 512  # the recording's size at most; reaching it ends the period
    out: str = ""  # the learned model's path ("" = DIR/site-model.pt)
    min_flows: int = 1000  # fewer recorded flows: refused
    min_service_flows: int = 50  # a service of the held-back part learned from fewer flows: refused
    held_back: float = 0.2  # last part of the recording, for the validation
    target_fpr: float = 0.005  # for the threshold
    max_fpr: float = 0.01  # held-back false-positive rate above it: refused
    site: str = ""  # a name for the provenance


@dataclass
class Config:
    model: str | None = None
    export: ExportConfig | None = None  # None: take the model's own prefix (offline use)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    flows: FlowsConfig = field(default_factory=FlowsConfig)
    zeek: ZeekConfig = field(default_factory=ZeekConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    detectors: DetectorsConfig = field(default_factory=DetectorsConfig)
    learn: LearnConfig = field(default_factory=LearnConfig)
    path: str | None = None  # the YAML file this came from, if any
    # Suricata rules: ``rules.Policy`` fields (mode, scope, threshold_flows, window, ttl, max_entries,
    # allowlist, require_handshake, sid_first, sid_last, apply, dataset_name) plus ``file``, ``state``,
    # ``suricata`` (binary), ``suricata_config`` (for suricata -T), ``socket`` (Suricata's unix socket,
    # dpack serve), ``tick`` (expiry/retry seconds); checked by ``rules_policy()``.
    rules: dict[str, Any] = field(default_factory=dict)

    def rules_policy(self) -> Any:
        """The ``rules:`` section's policy, each value of its declared type (``ConfigError`` otherwise)."""
        from .errors import RulesError
        from .sinks.rules import Policy

        known = {f.name: str(f.type) for f in dataclasses.fields(Policy) if f.init}
        unknown = set(self.rules) - set(known) - set(_RULES_EXTRA)
        if unknown:
            raise ConfigError(f"unknown setting(s) rules.{', rules.'.join(sorted(map(str, unknown)))}")
        values = {}
        for k, v in self.rules.items():
            if k in known:
                values[k] = _coerce_typed(f"rules.{k}", v, known[k])
        try:
            return Policy(**values)
        except RulesError as err:
            raise ConfigError(f"rules: {err}") from None

    def rules_setting(self, key: str) -> Any:
        """One of the rules section's other settings (``_RULES_EXTRA``), checked; None when unset."""
        typ, check, default = _RULES_EXTRA[key]
        v = self.rules.get(key, default)
        if v is None:
            return None
        v = _coerce(f"rules.{key}", v, typ)
        if not check(v):
            raise ConfigError(f"rules.{key} = {one_line(repr(v), 80)} is out of range")
        return v

    def model_path(self) -> str:
        if self.model:
            return self.model
        return str(default_model_path())


# rules: settings besides the Policy's: type, check, default
_RULES_EXTRA: dict[str, tuple[type, Any, Any]] = {
    "file": (str, lambda v: 0 < len(v) <= 4096, None),
    "state": (str, lambda v: 0 < len(v) <= 4096, None),
    "suricata": (str, lambda v: 0 < len(v) <= 4096, None),
    "suricata_config": (str, lambda v: 0 < len(v) <= 4096, None),
    "socket": (str, lambda v: 0 < len(v) <= 107, None),  # a unix socket path (sun_path)
    # seconds between expiry checks and apply retries; 0 would spin a core (also refuses NaN)
    "tick": (float, lambda v: 0.1 <= v <= 3600, 30.0),
}


def _coerce_typed(where: str, value: Any, annotation: str) -> Any:
    """``_coerce`` for a dataclass field's annotation text (``int``, ``float``, ``str``, ``bool``,
    ``list[str]``)."""
    if annotation == "list[str]":
        if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
            raise ConfigError(f"{where}: expected a list of strings")
        return list(value)
    return _coerce(where, value, {"int": int, "float": float, "str": str, "bool": bool}[annotation])


def repo_root() -> Path:
    """The source tree the package was installed from (editable install) - where ``models/`` lives."""
    return Path(__file__).resolve().parents[2]


def default_model_path() -> Path:
    """The shipped model, inside the package (``plugin/dpack/models`` links to the top-level
    ``models/``; a wheel or ``pip install .`` copies the files), so it is found without a checkout."""
    return Path(__file__).resolve().parent / "models" / DEFAULT_MODEL_NAME


_CHECKS: dict[tuple[str, str], Any] = {
    ("export", "packets"): lambda v: 1 <= v <= 64,
    ("export", "bytes"): lambda v: 20 <= v <= 1500,
    ("export", "policy"): lambda v: v in POLICIES,
    ("scoring", "batch_size"): lambda v: 1 <= v <= 65536,
    ("scoring", "explain"): lambda v: v in EXPLAIN_MODES,
    ("scoring", "top_k"): lambda v: 1 <= v <= 32,
    ("scoring", "cache_size"): lambda v: 0 <= v <= 10_000_000,
    ("export", "max_wait"): lambda v: 0 < v <= 3600,
    **{("flows", f.name): (lambda v: 0 < v <= 86400) for f in dataclasses.fields(FlowRules)},
    ("flows", "max_flows"): lambda v: 1 <= v <= 100_000_000,
    ("scoring", "workers"): lambda v: 0 <= v <= 64,
    ("zeek", "url"): lambda v: v.startswith(("ws://", "wss://", "tcp://")),
    ("zeek", "transport"): lambda v: v in ("websocket", "broker"),
    ("zeek", "topic"): lambda v: 0 < len(v) <= 200 and v.isprintable(),
    ("zeek", "reconnect_max"): lambda v: 0.2 <= v <= 3600,
    ("zeek", "keepalive"): lambda v: 0.5 <= v <= 3600,
    ("serve", "batch_size"): lambda v: 1 <= v <= 4096,
    ("serve", "max_delay_ms"): lambda v: 0 <= v <= 1000,
    ("serve", "queue_size"): lambda v: 1 <= v <= 10_000_000,
    ("serve", "workers"): lambda v: 0 <= v <= 64,
    ("serve", "outbox_size"): lambda v: 1 <= v <= 10_000_000,
    ("serve", "metrics_port"): lambda v: 0 <= v <= 65535,
    ("serve", "log_interval"): lambda v: 0.1 <= v <= 86400,
    ("serve", "guard"): lambda v: v in ("auto", "on", "off"),
    ("serve", "guard_window"): lambda v: 100 <= v <= 10_000_000,
    ("serve", "guard_hosts_share"): lambda v: 0 < v < 1,
    ("serve", "guard_min_hosts"): lambda v: 1 <= v <= 1_000_000,
    ("serve", "drift_window"): lambda v: 100 <= v <= 10_000_000,
    ("serve", "drift_psi"): lambda v: 0 < v <= 10,
    ("detectors", "context_max_hosts"): lambda v: 1 <= v <= 10_000_000,
    ("learn", "flows"): lambda v: 1 <= v <= 100_000_000,
    ("learn", "duration"): lambda v: 0 <= v <= 366 * 86400,
    ("learn", "max_mb"): lambda v: 1 <= v <= 1_000_000,
    ("learn", "min_flows"): lambda v: 1 <= v <= 100_000_000,
    ("learn", "min_service_flows"): lambda v: 1 <= v <= 1_000_000,
    ("learn", "held_back"): lambda v: 0.05 <= v <= 0.5,
    ("learn", "target_fpr"): lambda v: 0 < v < 0.5,
    ("learn", "max_fpr"): lambda v: 0 < v <= 1,
    ("learn", "dir"): lambda v: 0 < len(v) <= 4096,
    ("learn", "site"): lambda v: len(v) <= 200 and v.isprintable(),
}
_SECTIONS = ("export", "scoring", "flows", "zeek", "serve", "detectors", "learn")
_PATHS = {"detectors": ("records_model", "classifier_model"), "learn": ("dir", "out")}


def _show(value: Any) -> str:
    return one_line(repr(value), 80)


def _coerce(where: str, value: Any, typ: type) -> Any:
    if typ is bool:
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            return value.lower() in ("1", "true", "yes", "on")
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {_show(value)}")
        return value
    if isinstance(value, bool):
        raise ConfigError(f"{where}: expected {typ.__name__}, got {_show(value)}")
    if isinstance(value, str) and typ in (int, float):
        try:
            return typ(value)
        except ValueError:
            raise ConfigError(f"{where}: expected {typ.__name__}, got {_show(value)}") from None
    if typ is float and isinstance(value, int):
        return float(value)
    if not isinstance(value, typ):
        raise ConfigError(f"{where}: expected {typ.__name__}, got {type(value).__name__} {_show(value)}")
    return value


def _apply_section(obj: Any, section: str, values: Mapping[str, Any], origin: str) -> None:
    known = {f.name: f for f in dataclasses.fields(obj)}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"{origin}: unknown setting {section}.{key} (known: {', '.join(known)})")
        typ = {"int": int, "float": float, "str": str, "bool": bool}[str(known[key].type)]
        v = _coerce(f"{origin}: {section}.{key}", value, typ)
        check = _CHECKS.get((section, key))
        if check is not None and not check(v):
            raise ConfigError(f"{origin}: {section}.{key} = {v!r} is out of range")
        setattr(obj, key, v)


MAX_CONFIG_BYTES = 1 << 20
MAX_YAML_DEPTH = 32


class _Loader(yaml.SafeLoader):
    """Safe YAML without aliases and with bounded nesting: a config has no use for either, and an
    alias bomb of a few hundred bytes expands to gigabytes; deep nesting exhausts the stack."""

    depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise ConfigError(f"{self.name}: YAML aliases (*name) are not allowed, at line {mark.line + 1}")
        self.depth += 1
        if self.depth > MAX_YAML_DEPTH:
            mark = self.peek_event().start_mark
            raise ConfigError(f"{self.name}: nested deeper than {MAX_YAML_DEPTH}, at line {mark.line + 1}")
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def read_yaml(path: str | os.PathLike[str]) -> Any:
    """The YAML document in ``path``; every way it can be wrong is one ``ConfigError`` line."""
    where = one_line(path)
    with open_regular(path, "config file", ConfigError) as fh:
        data = fh.read(MAX_CONFIG_BYTES + 1)
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{where}: larger than {MAX_CONFIG_BYTES >> 20} MiB; not a dpack config")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{where}: not UTF-8 text (byte {err.start})") from None
    loader = None
    try:
        loader = _Loader(text)  # the reader checks the characters here already
        loader.name = where
        return loader.get_single_data()
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{where}: not valid YAML{at}") from None
    except (ValueError, OverflowError, RecursionError):  # e.g. a timestamp the YAML resolver cannot build
        raise ConfigError(f"{where}: not valid YAML (a value cannot be read)") from None
    finally:
        if loader is not None:
            loader.dispose()


def load_config(
    path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> Config:
    """Build the configuration: defaults, then ``path``, then ``env`` (os.environ), then ``overrides``."""
    cfg = Config()
    if path is not None:
        raw = read_yaml(path)
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: the top level must be a mapping")
        _merge(cfg, raw, str(path), base=Path(path).resolve().parent)
        cfg.path = str(path)
    env = os.environ if env is None else env
    from_env: dict[str, Any] = {}
    for k, v in env.items():
        if not k.startswith("DPACK_") or k in ("DPACK_MODEL",):
            continue
        parts = k[len("DPACK_") :].lower().split("_", 1)
        if len(parts) == 2 and parts[0] in _SECTIONS:
            from_env.setdefault(parts[0], {})[parts[1]] = v
    if "DPACK_MODEL" in env:
        from_env["model"] = env["DPACK_MODEL"]
    _merge(cfg, from_env, "environment", base=Path.cwd())
    if overrides:
        _merge(cfg, {k: v for k, v in overrides.items() if v or v == ""}, "command line", base=Path.cwd())
    if cfg.learn.enabled and cfg.serve.workers:
        raise ConfigError("learning mode scores in the serving process: set serve.workers: 0 while learning")
    if cfg.rules:  # before any work starts: a bad rules setting is a bad config, not a crash later
        cfg.rules_policy()
        for key in _RULES_EXTRA:
            cfg.rules_setting(key)
    return cfg


def _merge(cfg: Config, raw: Mapping[str, Any], origin: str, base: Path) -> None:
    for key, value in raw.items():
        if key == "model":
            if value is None:
                continue
            if not isinstance(value, str):
                raise ConfigError(f"{origin}: model must be a path string")
            cfg.model = str((base / value) if not os.path.isabs(value) else Path(value))
        elif key == "export":
            if not isinstance(value, Mapping):
                raise ConfigError(f"{origin}: export must be a mapping")
            if cfg.export is None:
                cfg.export = ExportConfig()
            _apply_section(cfg.export, "export", value, origin)
        elif key == "rules":
            if not isinstance(value, Mapping):
                raise ConfigError(f"{origin}: rules must be a mapping")
            cfg.rules.update(value)
        elif key in _SECTIONS:
            if not isinstance(value, Mapping):
                raise ConfigError(f"{origin}: {key} must be a mapping")
            section = getattr(cfg, key)
            _apply_section(section, key, value, origin)
            for k in _PATHS.get(key, ()):  # paths in a file are relative to it
                v = getattr(section, k)
                if v and not os.path.isabs(v):
                    setattr(section, k, str(base / v))
        else:
            raise ConfigError(
                f"{origin}: unknown setting {_show(key)} (known: model, rules, {', '.join(_SECTIONS)})"
            )
