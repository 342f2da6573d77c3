"""Property-based tests (Hypothesis): inputs generated from the contract and the file formats, valid
and mutated, must never raise past dpack's boundary; every sample must be scored or counted.

Budgets are seeded and short here (``DPACK_FUZZ=ci``, the default: derandomized, so a CI failure
reproduces); ``tools/fuzz.py`` runs the same properties for longer with fresh randomness."""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import os
from typing import Any

import pytest
from conftest import DEFAULT_MODEL
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from zeekpeer import samples_frame

from dpack.config import load_config
from dpack.errors import ConfigError, LabelsError, ModelError
from dpack.serve.metrics import Metrics, RateLimitedLog
from dpack.serve.pipeline import Pipeline
from dpack.zeek import contract as C
from dpack.zeek.wire import Port

settings.register_profile(
    "ci", max_examples=60, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck)
)
settings.register_profile(
    "long",
    max_examples=int(os.environ.get("DPACK_FUZZ_EXAMPLES", "5000")),
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
settings.load_profile(os.environ.get("DPACK_FUZZ", "ci"))

T0 = 1_700_000_000.0

# --- Zeek frames ---------------------------------------------------------------------------------------------

ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(str)
proto_port = st.sampled_from([(6, "tcp"), (17, "udp"), (1, "icmp")])


@st.composite
def sample(draw: Any) -> dict[str, Any]:
    proto, name = draw(proto_port)
    family = draw(st.sampled_from([ipv4, ipv6]))
    if proto == 1 and family is ipv6:
        proto = 58  # ICMPv6
    n = draw(st.integers(1, 3))
    ts = T0 + draw(st.floats(0, 1e6, allow_nan=False))
    return {
        "uid": "C" + draw(st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=17)),
        "orig_h": draw(family),
        "orig_p": Port(draw(st.integers(0, 65535)), name),
        "resp_h": draw(family),
        "resp_p": Port(draw(st.integers(0, 65535)), name),
        "proto": proto,
        "ts": ts,
        "ready": ts + draw(st.floats(0, 30, allow_nan=False)),
        "link": draw(st.sampled_from([1, 1, 1, 12, 101, 113, 0, 999])),
        "pkts": [base64.b64encode(draw(st.binary(max_size=160))).decode() for _ in range(n)],
        "is_orig": draw(st.lists(st.booleans(), min_size=n, max_size=n)),
    }


json_value = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
DATA_TYPES = [
    "count",
    "integer",
    "real",
    "string",
    "address",
    "port",
    "timestamp",
    "boolean",
    "vector",
    "none",
]


def nodes(obj: Any, path: tuple = ()) -> list[tuple]:
    """Paths of every Broker JSON node (a dict with @data-type) in a parsed frame."""
    out = []
    if isinstance(obj, dict):
        if "@data-type" in obj:
            out.append(path)
        for k, v in obj.items():
            out += nodes(v, (*path, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += nodes(v, (*path, i))
    return out


@st.composite
def mutated_frame(draw: Any) -> tuple[str, int]:
    """A frame of 1-8 samples with 0-3 mutations (a node's data or type replaced, or a node deleted);
    and the number of samples it carried before mutation."""
    recs = draw(st.lists(sample(), min_size=1, max_size=8))
    frame = json.loads(samples_frame(recs, T0 + draw(st.floats(0, 1e6, allow_nan=False))))
    for _ in range(draw(st.integers(0, 3))):
        paths = nodes(frame)
        path = draw(st.sampled_from(paths))
        parent: Any = frame
        for k in path[:-1]:
            parent = parent[k]
        node = parent[path[-1]] if path else frame
        how = draw(st.sampled_from(["data", "type", "delete"]))
        if how == "data":
            node["data"] = draw(json_value)
        elif how == "type":
            node["@data-type"] = draw(st.sampled_from(DATA_TYPES) | st.text(max_size=8))
        elif path and isinstance(parent, list):
            del parent[path[-1]]
    return json.dumps(frame), len(recs)


class Collect:
    """The pipeline's output, kept: verdict events posted, refusals, flagged verdicts."""

    def __init__(self) -> None:
        self.verdicts = 0
        self.refusals: list[tuple[str, str]] = []
        self.flagged_n = 0

    def post(self, text: str, n: int) -> None:
        json.loads(text)  # what goes to Zeek is always a whole, valid frame
        self.verdicts += n

    async def flush(self) -> None:
        pass

    async def refuse(self, topic: str, reason: str) -> None:
        assert reason.isprintable() and len(reason) < 1000
        self.refusals.append((topic, reason))

    def flagged(self, verdicts: Any, nodes: Any) -> None:
        self.flagged_n += len(verdicts)

    def report(self) -> None:
        pass


@pytest.fixture(scope="module")
def pipeline_parts(tmp_path_factory):
    from servekit import make_cfg

    from dpack.prefix.modelfile import load_model

    class NoPeer:
        url = "ws://127.0.0.1:9/v1/messages/json"  # never connected: the pipeline is driven directly

    cfg = make_cfg(tmp_path_factory.mktemp("p"), NoPeer, DEFAULT_MODEL, alerts="")
    return cfg, load_model(DEFAULT_MODEL)


def through_pipeline(parts: Any, frames: list[str]) -> tuple[Metrics, Collect, Pipeline]:
    cfg, model = parts
    metrics, out = Metrics(), Collect()
    pipe = Pipeline(copy.deepcopy(cfg), model, out, metrics, RateLimitedLog())

    async def go() -> None:
        runner = asyncio.create_task(pipe.run())
        for f in frames:
            await pipe.on_message(f, 0.0)
        pipe.stop.set()
        pipe.wakeup.set()
        await asyncio.wait_for(runner, 60)

    asyncio.run(go())
    return metrics, out, pipe


@given(st.lists(sample(), min_size=1, max_size=16))
def test_every_valid_sample_gets_exactly_one_verdict(pipeline_parts, recs):
    m, out, pipe = through_pipeline(pipeline_parts, [samples_frame(recs, T0)])
    c = m.counts
    assert c["messages_malformed"] == 0 and c["batches_refused"] == 0
    assert c["flows_scored"] == out.verdicts == len(recs) - c["samples_skipped"]
    assert c["samples_skipped"] == 0, "a contract-valid sample was skipped"
    assert not pipe.queue


@given(st.lists(mutated_frame(), min_size=1, max_size=3))
def test_no_mutated_frame_escapes_and_every_sample_is_scored_or_counted(pipeline_parts, frames):
    m, out, pipe = through_pipeline(pipeline_parts, [f for f, _ in frames])
    c = m.counts
    assert c["messages_received"] == len(frames)
    assert c["flows_scored"] == out.verdicts == c["flows_received"]
    # every message: whole (scored or skipped sample by sample), or refused or malformed as a whole
    whole = c["messages_malformed"] + c["batches_refused"] + c["zeek_errors"]
    assert whole <= len(frames)
    assert c["flows_received"] + c["samples_skipped"] <= sum(n for _, n in frames) + 8 * len(frames)
    if whole == 0:
        assert c["flows_received"] + c["samples_skipped"] >= 1
    assert not pipe.queue


# --- files ---------------------------------------------------------------------------------------------------

SECTION_KEYS = {
    "export": ["packets", "bytes", "policy", "max_wait"],
    "scoring": ["batch_size", "explain", "top_k", "cache_size", "processes"],
    "flows": ["max_flows", "idle_timeout"],
    "zeek": ["url", "topic", "reconnect_max", "keepalive", "transport"],
    "serve": ["batch_size", "max_delay_ms", "workers", "metrics_port", "alerts"],
    "rules": [
        "file",
        "policy",
        "threshold_flows",
        "window",
        "ttl",
        "max_entries",
        "sid_first",
        "tick",
        "scope",
    ],
}
yaml_scalar = (
    st.integers(-(10**20), 10**20)
    | st.floats()
    | st.booleans()
    | st.none()
    | st.text(max_size=30)
    | st.sampled_from(
        [".inf", "-.inf", ".nan", "0x10", "1e400", "~", "2020-13-45", "*a", "&a x", "!!python/object"]
    )
)


@st.composite
def config_text(draw: Any) -> str:
    import yaml

    doc: dict[str, Any] = {}
    for section in draw(st.lists(st.sampled_from(list(SECTION_KEYS)), max_size=4, unique=True)):
        keys = draw(st.lists(st.sampled_from(SECTION_KEYS[section]), max_size=4, unique=True))
        doc[section] = {k: draw(yaml_scalar | st.lists(yaml_scalar, max_size=3)) for k in keys}
    text = yaml.safe_dump(doc)
    if draw(st.booleans()):  # and a raw edit of the text: a cut, an inserted character or line
        i = draw(st.integers(0, len(text)))
        text = (
            text[:i]
            + draw(st.sampled_from(["", "\t", ": ", "&x ", "*x", "- ", "{", "\n  ", "\x00", "%"]))
            + text[i:]
        )
    return text


@given(config_text())
def test_any_config_file_loads_or_is_one_error_line(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("cfg") / "dpack.yaml"
    path.write_text(text)
    try:
        load_config(path, env={})
    except ConfigError as err:
        msg = str(err)
        assert "\n" not in msg and len(msg) < 600, msg


@pytest.fixture(scope="module")
def model_blob():
    import torch

    return torch.load(DEFAULT_MODEL, weights_only=True)


@given(
    st.sampled_from(["threshold", "config", "prefix", "state_dict", "format_version", "name"]),
    st.sampled_from(["arch", "n_packets", "n_bytes", "n_classes", "profile_dim", "policy", "masking", None]),
    yaml_scalar,
)
def test_any_model_file_loads_or_is_refused(tmp_path_factory, model_blob, part, key, value):
    import torch

    from dpack.prefix.modelfile import load_model

    blob = copy.copy(model_blob)
    if part in ("config", "prefix") and key is not None:
        blob[part] = {**blob[part], key: value}
    elif part == "state_dict":
        sd = dict(blob["state_dict"])
        name = sorted(sd)[abs(hash(str(value))) % len(sd)]
        sd[name] = (
            torch.zeros(3) if isinstance(value, int | float) else torch.full_like(sd[name], float("nan"))
        )
        blob["state_dict"] = sd
    else:
        blob[part] = value
    path = tmp_path_factory.mktemp("model") / "m.pt"
    torch.save(blob, path)
    try:
        loaded = load_model(path)
    except ModelError as err:
        assert "\n" not in str(err)
        return
    import math

    assert math.isfinite(loaded.threshold) and loaded.threshold > 0


label_cell = st.text(max_size=12) | st.sampled_from(
    ["benign", "attack", "Attack ", "1700000000.000001", "80", "-1"]
)


@given(st.lists(st.lists(label_cell, min_size=0, max_size=10), max_size=6), st.booleans())
def test_any_labels_file_reads_or_is_one_error_naming_the_file(tmp_path_factory, rows, bom):
    import csv
    import io

    from dpack.traffic.labels import read_labels

    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["ts_first", "proto", "src", "sport", "dst", "dport", "label", "family"])
    w.writerows(rows)
    path = tmp_path_factory.mktemp("labels") / "x.labels.csv"
    path.write_text(("\ufeff" if bom else "") + buf.getvalue())
    try:
        labels = read_labels(path)
    except LabelsError as err:
        assert str(err).startswith(str(path)) and "\n" not in str(err)
        return
    assert all(isinstance(v, tuple) and isinstance(v[0], bool) for v in labels.values())


@settings(max_examples=1)
@given(sample())
def test_the_contract_is_what_the_generators_build(rec):
    """The generators above must track the contract: a Sample has exactly these fields."""
    assert [n for n, _ in C.SAMPLE] == list(rec)
