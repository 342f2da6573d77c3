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
      idle_timeout: 60.0

Environment: ``DPACK_MODEL``, and ``DPACK_<SECTION>_<KEY>`` for the others (``DPACK_EXPORT_PACKETS=3``).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError
from .packets import POLICIES, PrefixSpec
from .score import EXPLAIN_MODES

DEFAULT_MODEL_NAME = "dpack-default.pt"


@dataclass
class ExportConfig:
    packets: int = 3
    bytes: int = 80
    policy: str = "payload"

    def spec(self) -> PrefixSpec:
        return PrefixSpec(self.packets, self.bytes, self.policy)


@dataclass
class ScoringConfig:
    batch_size: int = 4096
    explain: str = "anomalous"
    top_k: int = 3
    idle_timeout: float = 60.0


@dataclass
class Config:
    model: str | None = None
    export: ExportConfig | None = None  # None: take the model's own prefix (offline use)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)

    def model_path(self) -> str:
        if self.model:
            return self.model
        return str(default_model_path())


def repo_root() -> Path:
    """The source tree the package was installed from (editable install) - where ``models/`` lives."""
    return Path(__file__).resolve().parents[2]


def default_model_path() -> Path:
    return repo_root() / "models" / DEFAULT_MODEL_NAME


_CHECKS: dict[tuple[str, str], Any] = {
    ("export", "packets"): lambda v: 1 <= v <= 64,
    ("export", "bytes"): lambda v: 20 <= v <= 1500,
    ("export", "policy"): lambda v: v in POLICIES,
    ("scoring", "batch_size"): lambda v: 1 <= v <= 65536,
    ("scoring", "explain"): lambda v: v in EXPLAIN_MODES,
    ("scoring", "top_k"): lambda v: 1 <= v <= 32,
    ("scoring", "idle_timeout"): lambda v: 0 < v <= 86400,
}


def _coerce(where: str, value: Any, typ: type) -> Any:
    if typ is bool or isinstance(value, bool) and typ is not bool:
        raise ConfigError(f"{where}: expected {typ.__name__}, got {value!r}")
    if isinstance(value, str) and typ in (int, float):
        try:
            return typ(value)
        except ValueError:
            raise ConfigError(f"{where}: expected {typ.__name__}, got {value!r}") from None
    if typ is float and isinstance(value, int):
        return float(value)
    if not isinstance(value, typ):
        raise ConfigError(f"{where}: expected {typ.__name__}, got {type(value).__name__} {value!r}")
    return value


def _apply_section(obj: Any, section: str, values: Mapping[str, Any], origin: str) -> None:
    known = {f.name: f for f in dataclasses.fields(obj)}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"{origin}: unknown setting {section}.{key} (known: {', '.join(known)})")
        typ = {"int": int, "float": float, "str": str}[str(known[key].type)]
        v = _coerce(f"{origin}: {section}.{key}", value, typ)
        check = _CHECKS.get((section, key))
        if check is not None and not check(v):
            raise ConfigError(f"{origin}: {section}.{key} = {v!r} is out of range")
        setattr(obj, key, v)


def load_config(
    path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> Config:
    """Build the configuration: defaults, then ``path``, then ``env`` (os.environ), then ``overrides``."""
    cfg = Config()
    if path is not None:
        try:
            raw = yaml.safe_load(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such config file") from None
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark else ""
            raise ConfigError(f"{path}: not valid YAML{where}") from None
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: the top level must be a mapping")
        _merge(cfg, raw, str(path), base=Path(path).resolve().parent)
    env = os.environ if env is None else env
    from_env: dict[str, Any] = {}
    for k, v in env.items():
        if not k.startswith("DPACK_") or k in ("DPACK_MODEL",):
            continue
        parts = k[len("DPACK_") :].lower().split("_", 1)
        if len(parts) == 2 and parts[0] in ("export", "scoring"):
            from_env.setdefault(parts[0], {})[parts[1]] = v
    if "DPACK_MODEL" in env:
        from_env["model"] = env["DPACK_MODEL"]
    _merge(cfg, from_env, "environment", base=Path.cwd())
    if overrides:
        _merge(cfg, {k: v for k, v in overrides.items() if v}, "command line", base=Path.cwd())
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
        elif key == "scoring":
            if not isinstance(value, Mapping):
                raise ConfigError(f"{origin}: scoring must be a mapping")
            _apply_section(cfg.scoring, "scoring", value, origin)
        else:
            raise ConfigError(f"{origin}: unknown setting {key!r} (known: model, export, scoring)")
