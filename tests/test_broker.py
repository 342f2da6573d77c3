"""``dpack serve`` over native Broker.

With a real Zeek at hand (``make test`` puts ../shared/zeek on PATH and links its own Broker 2.8
bindings into the venv), real Zeek processes are the peers: a hostile Zeek node (wrong argument types,
an unknown event, a batch of an older contract) that then goes away, and a Zeek running dpack's package
on a trace that takes its place on the same port. Without one, a Broker endpoint of the bindings at hand
(Debian's python3-broker, Broker 1.4) plays Zeek for the same faults. The live sensor over Broker is in
``test_zeek_live.py``. Skipped, visibly, where no bindings are installed."""

from __future__ import annotations

import datetime
import ipaddress
import subprocess
import time

import pytest
import zeeklab
from conftest import DEFAULT_MODEL, ROOT, SAMPLE, offline_verdicts
from test_serve import Running, free_port, wait_for
from zeekpeer import samples_from_pcap

from dpack.config import load_config
from dpack.errors import DpackError
from dpack.prefix.modelfile import load_model
from dpack.zeek import contract as C

broker = pytest.importorskip("broker", reason="Zeek's Broker Python bindings are not installed")

UTC = datetime.UTC


@pytest.fixture(scope="module")
def sample_recs():
    return samples_from_pcap(str(SAMPLE))


def b_port(p):
    return broker.Port(
        p.number, {"tcp": broker.Port.TCP, "udp": broker.Port.UDP}.get(p.proto, broker.Port.ICMP)
    )


def b_time(ts):
    return datetime.datetime.fromtimestamp(ts, UTC)


def samples_event(recs, packets=3, version=C.CONTRACT_VERSION):
    """``DPack::samples(hdr, batch)`` as main.zeek publishes it, in Broker's own types."""
    hdr = [
        broker.Count(version),
        "zeek",
        "dpack/verdicts",
        "payload",
        broker.Count(packets),
        broker.Count(80),
        5.0,
        b_time(time.time()),
    ]
    batch = [
        [
            r["uid"],
            ipaddress.ip_address(r["orig_h"]),
            b_port(r["orig_p"]),
            ipaddress.ip_address(r["resp_h"]),
            b_port(r["resp_p"]),
            broker.Count(r["proto"]),
            b_time(r["ts"]),
            b_time(r["ready"]),
            broker.Count(r["link"]),
            list(r["pkts"]),
            list(r["is_orig"]),
        ]
        for r in recs
    ]
    return broker.zeek.Event(C.SAMPLES_EVENT, hdr, batch)


class FakeZeek:
    """A Broker endpoint listening like ``Broker::listen`` in main.zeek, subscribed to the verdict topic."""

    def __init__(self, port=0):
        self.ep = broker.Endpoint()
        want = port or free_port()  # (Broker 2.8's listen on port 0 returns 0, not the port it took)
        for _ in range(100):  # a restarted peer may wait for the old socket to go (Broker 2.8)
            self.port = self.ep.listen("127.0.0.1", want)
            if self.port == want:
                break
            time.sleep(0.1)
        assert self.port == want
        self.sub = self.ep.make_subscriber("dpack/verdicts")
        self.status = self.ep.make_status_subscriber(True)
        self.events = []

    def wait_peer(self, timeout=10.0):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if any(getattr(s, "code", lambda: None)() == broker.SC.PeerAdded for s in self.status.poll()):
                time.sleep(0.3)  # let the scorer's subscription reach us
                return
            time.sleep(0.02)
        raise AssertionError("dpack serve did not peer")

    def publish(self, ev):
        self.ep.publish("dpack/samples/0", ev)

    def collect(self):
        for _topic, data in self.sub.poll():
            ev = broker.zeek.Event(data)
            self.events.append((ev.name(), ev.args()))
        return self.events

    def verdicts(self):
        return [rec for name, args in self.collect() if name == C.VERDICTS_EVENT for rec in args[0]]

    def close(self):
        self.ep.shutdown()


def broker_cfg(tmp_path, port, workers=0):
    return load_config(
        None,
        env={},
        overrides={
            "model": str(DEFAULT_MODEL),
            "zeek": {
                "transport": "broker",
                "url": f"tcp://127.0.0.1:{port}",
                "topic": "dpack/samples",
                "reconnect_max": 0.5,
            },
            "serve": {
                "alerts": str(tmp_path / "alerts.jsonl"),
                "metrics_port": free_port(),
                "log_interval": 0.5,
                "workers": workers,
            },
        },
    )


def test_verdicts_over_native_broker_equal_offline_scoring(tmp_path, sample_recs):
    zeek = FakeZeek()
    run = Running(broker_cfg(tmp_path, zeek.port))
    try:
        zeek.wait_peer()
        for i in range(0, len(sample_recs), 64):
            zeek.publish(samples_event(sample_recs[i : i + 64]))
        wait_for(lambda: len(zeek.verdicts()) >= len(sample_recs), what="all verdicts over Broker")
        verdicts = zeek.verdicts()
        names = [n for n, _ in C.VERDICT]
        by_uid = {v[0]: dict(zip(names, v, strict=True)) for v in verdicts}
        assert set(by_uid) == {r["uid"] for r in sample_recs} and run.m["flows_scored"] == len(sample_recs)
        offline = {(round(v.ts, 6), v.src, v.sport): v for v in offline_verdicts(load_model(DEFAULT_MODEL))}
        for r in sample_recs:
            v = by_uid[r["uid"]]
            o = offline[(round(r["ts"], 6), r["orig_h"], r["orig_p"].number)]
            assert v["score"] == pytest.approx(o.score, rel=1e-5) and v["anomalous"] == o.anomalous
            # typed as Zeek declares them: addr, port, count-free reals, time
            assert isinstance(v["orig_h"], ipaddress.IPv4Address | ipaddress.IPv6Address)
            assert isinstance(v["resp_p"], broker.Port) and isinstance(v["sent"], datetime.datetime)
            assert isinstance(v["score"], float) and isinstance(v["anomalous"], bool)
        assert run.m["flows_flagged"] == sum(v["anomalous"] for v in by_uid.values()) > 50
    finally:
        run.stop()
        zeek.close()


NODE = """\
# A Zeek node that is not a dpack one: it listens for dpack serve, publishes {what}, and terminates.
redef exit_only_after_terminate = T;
module DPack;
export {{
{decl}
	global scorer_refused: event(reason: string);
}}
global done: event();
event zeek_init()
	{{
	Broker::subscribe("dpack/verdicts");
	Broker::listen("127.0.0.1", {port}/tcp);
	}}
event Broker::peer_added(endpoint: Broker::EndpointInfo, msg: string)
	{{
{publish}
	schedule 2sec {{ done() }};
	}}
event done()
	{{
	terminate();
	}}
event scorer_refused(reason: string)
	{{
	print fmt("refused: %s", reason);
	terminate();
	}}
"""
HOSTILE = {  # wrong argument types and an event dpack does not know
    "what": "garbage",
    "decl": "\tglobal samples: event(hdr: string, batch: vector of count);\n\tglobal nope: event(x: count);",
    "publish": '\tBroker::publish("dpack/samples/0", samples, "not a header", vector(1, 2));\n'
    '\tBroker::publish("dpack/samples/0", nope, 7);',
}
OLD_CONTRACT = {  # what a node with the contract-2 package sends: its header had no max_wait
    "what": "a contract-2 batch",
    "decl": "\ttype Header: record { version: count; node: string; reply_topic: string; policy: string;\n"
    "\t    packets: count; bytes: count; sent: time; };\n"
    "\tglobal samples: event(hdr: Header, batch: vector of count);",
    "publish": '\tBroker::publish("dpack/samples/0", samples, Header($version=2, $node="zeek", '
    '$reply_topic="dpack/verdicts",\n\t    $policy="payload", $packets=3, $bytes=80, $sent=current_time()), vector());',
}


def _node(tmp_path, name, port, spec):
    d = tmp_path / name
    d.mkdir()
    (d / "node.zeek").write_text(NODE.format(port=port, **spec))
    return subprocess.run(["zeek", "-b", "node.zeek"], cwd=d, capture_output=True, text=True, timeout=60)


def _real_zeek_peers(tmp_path, workers):
    """Zeek nodes that send garbage or an older contract are counted and refused, never fatal; each goes
    away and the next takes its port; the last one runs dpack's package on a trace and logs one verdict
    per connection: dpack serve peered again every time."""
    if broker.Version.string().startswith("1."):
        pytest.fail(
            "a Zeek is on PATH but the venv has Debian's Broker 1.4 bindings: run tools/link-broker.sh"
        )
    port = free_port()
    run = Running(broker_cfg(tmp_path, port, workers))
    try:
        r = _node(tmp_path, "hostile", port, HOSTILE)
        assert r.returncode == 0, r.stderr
        wait_for(lambda: run.m["messages_malformed"] >= 2, what="garbage counted")
        r = _node(tmp_path, "old", port, OLD_CONTRACT)
        assert f"refused: contract version 2 from node zeek, dpack speaks {C.CONTRACT_VERSION}" in r.stdout, (
            r.stdout + r.stderr
        )
        assert run.m["batches_refused"] == 1
        trace = ROOT / "tests" / "btest" / "Traces" / "mixed.pcap"
        real = zeeklab.read_with_zeek(
            trace,
            tmp_path / "real",
            zeeklab.site_dir(tmp_path),
            ["DPack::listen_websocket=F", "DPack::listen_broker=T", f"DPack::broker_port={port}/tcp"],
            timeout=120,
        )
        logged = zeeklab.read_zeek_log(real / "dpack.log")
        conns = zeeklab.read_zeek_log(real / "conn.log")
        assert len(logged) == len(conns) == 4 and {v["uid"] for v in logged} == {c["uid"] for c in conns}
        assert run.m["reconnects"] == 3 and run.error is None
    finally:
        run.stop()


@pytest.mark.parametrize("workers", [0, 2], ids=["in-process", "2-workers"])
def test_broker_peer_restart_hostile_events_and_version_refusal(tmp_path, sample_recs, workers):
    """Real Zeek nodes where a Zeek is at hand (``_real_zeek_peers``); else a Broker 1.4 endpoint."""
    if zeeklab.zeek_bin() is not None:
        _real_zeek_peers(tmp_path, workers)
        return
    if not broker.Version.string().startswith("1."):
        pytest.skip("no Zeek here, and Broker 2.x cannot listen again in one process for the stand-in")
    zeek = FakeZeek()
    port = zeek.port
    run = Running(broker_cfg(tmp_path, port, workers))
    try:
        zeek.wait_peer()
        zeek.publish(broker.zeek.Event(C.SAMPLES_EVENT, "not a header", []))  # wrong types
        zeek.publish(broker.zeek.Event("DPack::nope", 1))  # unknown event
        zeek.publish(samples_event(sample_recs[:5], version=1))  # a contract-1 Zeek package
        wait_for(lambda: run.m["messages_malformed"] >= 2 and run.m["batches_refused"] >= 1, what="counted")
        wait_for(lambda: any(n == C.REFUSED_EVENT for n, _ in zeek.collect()), what="refusal sent to Zeek")
        # Zeek restarts: the peering ends, dpack serve peers again with backoff and keeps scoring
        zeek.close()
        wait_for(lambda: not run.service.link.connected, what="link down")
        zeek = FakeZeek(port)
        zeek.wait_peer(timeout=20)
        zeek.publish(samples_event(sample_recs[:40]))
        wait_for(lambda: len(zeek.verdicts()) >= 40, what="verdicts after the restart")
        assert run.m["reconnects"] >= 2 and run.error is None
    finally:
        run.stop()
        zeek.close()


def test_broker_transport_needs_a_tcp_url(tmp_path):
    from dpack.serve.service import Service

    cfg = broker_cfg(tmp_path, 9999)
    cfg.zeek.url = "ws://127.0.0.1:27759/v1/messages/json"
    with pytest.raises(DpackError, match="tcp://HOST:PORT"):
        Service(cfg)
