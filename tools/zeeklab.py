"""A real Zeek sensor on this machine, for tests and benchmarks: network namespaces, veth pairs,
``zeek -i`` with Zeek's default scripts plus ``@load dpack``, ``dpack serve`` beside it, and a labelled
capture replayed onto the wire with ``tcpreplay``.

    python tools/zeeklab.py live CAPTURE [CAPTURE ...] [--workers N] [--transport websocket|broker]
    python tools/zeeklab.py cluster CAPTURE [CAPTURE ...]

The live command replays the captures (one after the other, at the speed they were captured), then
compares what Zeek logged with what ``dpack score`` says about the same captures, and prints the
agreement. Tests import the same functions (``tests/test_zeek_live.py``).

Why the replay is padded: lab captures are cut at a snaplen (lab-dev: 256 bytes) and keep each packet's
wire length in the record header. ``tcpreplay`` sends only the captured bytes, so a live Zeek would see
packets shorter than their own IP length and drop them (``truncated_IP_len`` weird): the responses of
every HTTP, HTTPS and FTP-data flow, which a sensor on a real wire does see. ``tcprewrite --fixlen=pad
--fixcsum`` restores each packet's wire length (zero bytes after the snaplen, checksums recomputed); the
first 256 bytes, all that dpack reads, are unchanged but for the checksums, which dpack masks.

Only hosts in namespaces this module creates are involved; everything it starts is stopped and every
namespace it creates is removed, also on failure. Needs root, iproute2, ethtool, tcpreplay and Zeek.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import gzip
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SHARED_ZEEK = ROOT.parent / "shared" / "zeek"


# --- finding Zeek ----------------------------------------------------------------------------------------


def zeek_bin() -> Path | None:
    """The directory holding a working ``zeek`` (on PATH), or None."""
    z = shutil.which("zeek")
    if z is None:
        return None
    try:
        r = subprocess.run([z, "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    return Path(z).parent if r.returncode == 0 else None


def zeek_version() -> tuple[int, int]:
    z = shutil.which("zeek")
    out = subprocess.run([z or "zeek", "--version"], capture_output=True, text=True, timeout=60).stdout
    parts = out.strip().split()[-1].split(".")
    return int(parts[0]), int(parts[1])


def missing_for_live() -> str:
    """Why a live sensor cannot run here ("" if it can)."""
    if zeek_bin() is None:
        return "no zeek on PATH (make test puts ../shared/zeek/bin there)"
    if os.geteuid() != 0:
        return "needs root (network namespaces, live capture)"
    for tool in ("ip", "ethtool", "tcpreplay", "tcprewrite"):
        if shutil.which(tool) is None:
            return f"needs {tool} (make test installs it)"
    return ""


def site_dir(parent: Path) -> Path:
    """A directory for ZEEKPATH in which ``@load dpack`` finds this repository's Zeek package (what
    ``zkg install`` arranges through its script_dir/packages)."""
    site = parent / "site"
    site.mkdir(parents=True, exist_ok=True)
    link = site / "dpack"
    if not link.exists():
        link.symlink_to(ROOT / "zeek_scripts")
    return site


def zeek_env(site: Path) -> dict[str, str]:
    zc = shutil.which("zeek-config")
    base = subprocess.run([zc or "zeek-config", "--zeekpath"], capture_output=True, text=True).stdout.strip()
    env = dict(os.environ)
    env["ZEEKPATH"] = f"{base}:{site}"
    env.setdefault("TZ", "UTC")
    return env


def read_with_zeek(
    pcap: Path, workdir: Path, site: Path, options: Sequence[str], timeout: float = 300
) -> Path:
    """``zeek -C -r pcap`` with ``@load dpack``, ``DPack::score_traces=T`` (it waits for a scorer and for
    every verdict, as a live sensor would) and ``options`` (where the scorer attaches:
    ``DPack::listen_port=PORT/tcp``, or the Broker ones), in ``workdir``, which keeps its logs."""
    workdir.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(
        ["zeek", "-C", "-r", str(pcap), "dpack", "DPack::score_traces=T", *options],
        cwd=workdir, env=zeek_env(site), capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    if r.returncode != 0:
        raise RuntimeError(f"zeek -r {pcap.name} failed: {r.stderr[-2000:]}")
    return workdir


def serve_for_zeek(
    workdir: Path, model: Path, more: str = "", **serve: Any
) -> tuple[subprocess.Popen[Any], int, int]:
    """``dpack serve`` (the real command) with ``model``, waiting for a Zeek on a free WebSocket port:
    (process, that port, its metrics port). ``serve``: more ``serve:`` settings; ``more``: more YAML
    sections. Its output goes to ``workdir/serve.out``; stop it with ``stop``."""
    ws, mport = free_port(), free_port()
    settings = ", ".join(
        ["alerts: ''", f"metrics_port: {mport}", "log_interval: 1.0", "watch: false"]
        + [f"{k}: {v}" for k, v in serve.items()]
    )
    cfg = workdir / "dpack.yaml"
    cfg.write_text(
        f"model: {model}\n"
        f"zeek: {{url: 'ws://127.0.0.1:{ws}/v1/messages/json', reconnect_max: 0.5}}\n"
        f"serve: {{{settings}}}\n" + more
    )
    proc = subprocess.Popen(
        [*dpack_cmd(), "serve", "--config", str(cfg)],
        cwd=workdir, stdout=open(workdir / "serve.out", "w"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    return proc, ws, mport


# --- captures ----------------------------------------------------------------------------------------------


def plain_pcap(src: Path, dst: Path) -> Path:
    """``src`` itself if it is not gzip-compressed, else a decompressed copy at ``dst`` (Zeek's libpcap
    reads no gzip)."""
    with open(src, "rb") as fh:
        if fh.read(2) != b"\x1f\x8b":
            return src
    with gzip.open(src, "rb") as fh, open(dst, "wb") as out:
        shutil.copyfileobj(fh, out)
    return dst


def padded_copy(src: Path, dst: Path, pad: bool = True) -> Path:
    """``src`` (pcap, gzip allowed) as a pcap whose packets have their wire length again (see the module
    docstring), for tcpreplay. ``pad=False``: as captured (to see what a plain replay does)."""
    raw = dst.with_suffix(".raw.pcap")
    opener = gzip.open if src.read_bytes()[:2] == b"\x1f\x8b" else open
    with opener(src, "rb") as fh, open(raw, "wb") as out:
        shutil.copyfileobj(fh, out)
    if not pad:
        return raw.rename(dst)
    subprocess.run(
        ["tcprewrite", "--fixlen=pad", "--fixcsum", "-i", str(raw), "-o", str(dst)],
        check=True,
        capture_output=True,
    )
    raw.unlink()
    return dst


# --- what Zeek exports, read from a trace ----------------------------------------------------------------

DUMP_SCRIPT = """\
@load dpack
hook DPack::publish_policy(hdr: DPack::BatchHeader, batch: vector of DPack::Sample)
	{
	for ( i in batch )
		print to_json(batch[i]);
	break;
	}
"""


def zeek_samples(
    capture: Path,
    workdir: Path,
    extra: Sequence[str] = (),
    default_scripts: bool = True,
    checksums: bool = False,
) -> list[dict[str, Any]]:
    """The samples ``zeek -r`` exports for a capture (Zeek's default scripts plus ``@load dpack``, as a
    sensor runs it; ``extra``: more scripts or ``name=value`` redefs), as dicts of the contract's
    Sample fields (``pkts`` base64, ports as {"port", "proto"})."""
    workdir.mkdir(parents=True, exist_ok=True)
    site = site_dir(workdir)
    (workdir / "dump.zeek").write_text(DUMP_SCRIPT)
    capture = plain_pcap(capture, workdir / "trace.pcap")
    argv = [
        "zeek",
        *([] if default_scripts else ["-b"]),
        *([] if checksums else ["-C"]),
        "-r",
        str(capture),
        str(workdir / "dump.zeek"),
        *extra,
    ]
    r = subprocess.run(argv, cwd=workdir, env=zeek_env(site), capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise RuntimeError(f"zeek failed: {r.stderr[-2000:]}")
    return [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]


def compare_flows(
    capture: Path, workdir: Path, spec: Any = None
) -> tuple[list[dict[str, Any]], list[tuple[Any, ...]]]:
    """What ``zeek -r`` exports for a capture against the samples of dpack's flow table: (Zeek's samples,
    the differences). A difference is (flow key, what differs, Zeek's value, dpack's value): the number of
    flows of one 5-tuple, their frames and directions, or when they start and are ready (reading a
    trace, Zeek runs a timer at the first packet at or after it is due, or a little later)."""
    import base64
    import bisect

    from dpack.traffic.capture import read_capture
    from dpack.traffic.encode import PrefixSpec
    from dpack.traffic.flows import FlowTable

    spec = spec or PrefixSpec(3, 80, "payload")
    zs = zeek_samples(capture, workdir)
    live: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
    for z in zs:
        live[(z["proto"], z["orig_h"], z["orig_p"]["port"], z["resp_h"], z["resp_p"]["port"])].append(z)
    times = sorted(t for t, _, _ in read_capture(capture))

    def fired(ready: float) -> float:
        i = bisect.bisect_left(times, ready - 1e-6)
        return times[i] if i < len(times) else times[-1]

    off: dict[tuple[Any, ...], list[Any]] = defaultdict(list)
    for s in FlowTable(spec).samples(read_capture(capture)):
        off[(s.proto, s.src, s.sport, s.dst, s.dport)].append(s)
    differ: list[tuple[Any, ...]] = []
    late: list[float] = []
    for k in sorted(set(live) | set(off), key=str):
        zl = sorted(live.get(k, []), key=lambda z: z["ts"])
        ol = sorted(off.get(k, []), key=lambda s: s.ts)
        if len(zl) != len(ol):
            differ.append((k, "flows", len(zl), len(ol)))
            continue
        for z, s in zip(zl, ol, strict=True):
            frames = [base64.b64decode(p) for p in z["pkts"]]
            if frames != [f.data[:128] for f in s.frames] or z["is_orig"] != [f.is_orig for f in s.frames]:
                differ.append((k, "frames", [len(f) for f in frames], [len(f.data) for f in s.frames]))
            elif abs(z["ts"] - s.ts) > 1e-5 or z["ready"] < s.ready - 1e-5:
                differ.append((k, "times", (z["ts"], z["ready"]), (s.ts, s.ready)))
            else:  # Zeek runs at most max_timer_expires (300) timers per packet: in a flood, later
                late.append(z["ready"] - fired(s.ready))
    return zs, differ, max(late, default=0.0)


# --- namespaces ------------------------------------------------------------------------------------------


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


def _quiet_offloads(ns: str, dev: str) -> None:
    """Segmentation and checksum offloads off, so the sensor sees frames as the capture has them."""
    subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            ns,
            "ethtool",
            "-K",
            dev,
            "rx",
            "off",
            "tx",
            "off",
            "tso",
            "off",
            "gso",
            "off",
            "gro",
            "off",
        ],
        capture_output=True,
        timeout=30,
    )


def _quiet_namespace(ns: str) -> None:
    """Loopback up, IPv6 off: the kernel would otherwise send its own router solicitations and MLD
    reports onto the wire, flows that are not in the capture."""
    subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            ns,
            "sysctl",
            "-q",
            "-w",
            "net.ipv6.conf.all.disable_ipv6=1",
            "net.ipv6.conf.default.disable_ipv6=1",
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    _ip("-n", ns, "link", "set", "lo", "up")


@dataclass
class Wire:
    """One veth pair: ``replay_dev`` in ``replay_ns`` (tcpreplay sends here), ``sensor_dev`` in the
    sensor namespace (Zeek listens here)."""

    replay_ns: str
    replay_dev: str
    sensor_dev: str


@contextlib.contextmanager
def namespaces(wires: int = 1) -> Iterator[tuple[str, list[Wire]]]:
    """A sensor namespace with ``wires`` veth pairs from their own replay namespaces; removed on exit."""
    tag = secrets.token_hex(3)
    sensor = f"dpk{tag}s"
    made: list[str] = []
    try:
        _ip("netns", "add", sensor)
        made.append(sensor)
        _quiet_namespace(sensor)
        out = []
        for i in range(wires):
            rns = f"dpk{tag}r{i}"
            _ip("netns", "add", rns)
            made.append(rns)
            _quiet_namespace(rns)
            rdev, sdev = f"rp{tag}{i}", f"sn{tag}{i}"
            _ip("link", "add", rdev, "netns", rns, "type", "veth", "peer", "name", sdev, "netns", sensor)
            _ip("-n", rns, "link", "set", rdev, "up")
            _ip("-n", sensor, "link", "set", sdev, "up")
            _quiet_offloads(rns, rdev)
            _quiet_offloads(sensor, sdev)
            out.append(Wire(rns, rdev, sdev))
        yield sensor, out
    finally:
        for ns in reversed(made):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


def in_ns(ns: str, argv: Sequence[str]) -> list[str]:
    return ["ip", "netns", "exec", ns, *argv]


def free_port() -> int:
    """A port number to use inside a fresh namespace (its loopback is empty; any number is free there,
    this one only avoids the well-known range)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- processes -------------------------------------------------------------------------------------------


def wait_for(pred: Any, timeout: float, what: str, step: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(step)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def stop(proc: subprocess.Popen[Any] | None, sig: int = signal.SIGTERM, timeout: float = 30) -> int | None:
    if proc is None:
        return None
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    return proc.returncode


def metrics(ns: str, port: int) -> dict[str, float]:
    """``dpack serve``'s Prometheus counters, read from inside the namespace."""
    code = (
        "import urllib.request,sys;"
        f"sys.stdout.write(urllib.request.urlopen('http://127.0.0.1:{port}/metrics',timeout=5).read().decode())"
    )
    r = subprocess.run(in_ns(ns, [sys.executable, "-c", code]), capture_output=True, text=True, timeout=30)
    out: dict[str, float] = {}
    for line in r.stdout.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                out[name] = float(value)
    return out


def dpack_cmd() -> list[str]:
    exe = Path(sys.executable).with_name("dpack")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "dpack.cli"]


# --- Zeek logs -------------------------------------------------------------------------------------------


def read_zeek_log(path: Path) -> list[dict[str, str]]:
    """A Zeek ASCII log as dicts (``-`` for unset, as Zeek writes it)."""
    if not path.exists():
        return []
    fields: list[str] = []
    rows = []
    with open(path, errors="replace") as fh:
        for line in fh:
            line = line.rstrip("\n")
            if line.startswith("#fields"):
                fields = line.split("\t")[1:]
            elif line and not line.startswith("#"):
                rows.append(dict(zip(fields, line.split("\t"), strict=False)))
    return rows


# --- the live sensor -------------------------------------------------------------------------------------


@dataclass
class LiveRun:
    """What one live run left behind."""

    workdir: Path
    zeek_logs: Path
    verdict_shards: int
    metrics: list[dict[str, float]] = field(default_factory=list)
    serve_logs: list[str] = field(default_factory=list)
    zeek_stderr: str = ""

    def log(self, name: str) -> list[dict[str, str]]:
        return read_zeek_log(self.zeek_logs / f"{name}.log")


SENSOR_SCRIPT = """\
@load dpack
redef DPack::listen_port = {port}/tcp;
redef DPack::listen_broker = {broker};
redef DPack::broker_port = {broker_port}/tcp;
redef DPack::notice_suppression = 0secs;
event Cluster::websocket_client_added(info: Cluster::EndpointInfo, subscriptions: string_vec)
	{{ print fmt("dpack-lab: websocket client %s", subscriptions); }}
event Broker::peer_added(endpoint: Broker::EndpointInfo, msg: string)
	{{ print fmt("dpack-lab: broker peer %s", msg); }}
"""


def run_live(
    captures: Sequence[Path],
    workdir: Path,
    transport: str = "websocket",
    workers: int = 0,
    serve_config: dict[str, Any] | None = None,
    settle: float = 8.0,
    pad: bool = True,
) -> LiveRun:
    """Zeek on a veth in a fresh namespace, ``dpack serve`` attached, the captures replayed onto the wire.

    Returns when every connection's first packets have had time to be exported and scored (``settle``
    seconds after the replay: Zeek's ``DPack::max_wait`` is 5 s) and Zeek has written its logs.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    site = site_dir(workdir)
    padded = [padded_copy(c, workdir / f"replay-{i}.pcap", pad) for i, c in enumerate(captures)]
    zlogs = workdir / "zeek"
    zlogs.mkdir(exist_ok=True)
    port, bport, mport = free_port(), free_port(), free_port()
    (workdir / "sensor.zeek").write_text(
        SENSOR_SCRIPT.format(port=port, broker="T" if transport == "broker" else "F", broker_port=bport)
    )
    url = f"tcp://127.0.0.1:{bport}" if transport == "broker" else f"ws://127.0.0.1:{port}/v1/messages/json"
    cfg = {
        "zeek": {"url": url, "transport": transport, "reconnect_max": 1.0},
        "serve": {
            "metrics_port": mport,
            "alerts": str(workdir / "alerts.jsonl"),
            "workers": workers,
            "log_interval": 5.0,
            # live against offline: every verdict must notice as dpack score flags it, the warm-up's too
            # (the day-one guard, on for the shipped model, has its own tests)
            "guard": "off",
        },
    }
    for k, v in (serve_config or {}).items():
        cfg.setdefault(k, {}).update(v)
    (workdir / "dpack.yaml").write_text(json.dumps(cfg))
    run = LiveRun(workdir, zlogs, 1)
    with namespaces(1) as (sensor, wires):
        w = wires[0]
        zeek = serve = None
        zerr = open(workdir / "zeek.stderr", "w")
        zout = open(workdir / "zeek.stdout", "w")
        serr = open(workdir / "serve.log", "w")
        try:
            zeek = subprocess.Popen(
                in_ns(sensor, ["zeek", "-i", w.sensor_dev, str(workdir / "sensor.zeek")]),
                cwd=zlogs,
                env=zeek_env(site),
                stdout=zout,
                stderr=zerr,
            )
            serve = subprocess.Popen(
                in_ns(sensor, [*dpack_cmd(), "serve", "--config", str(workdir / "dpack.yaml")]),
                cwd=workdir,
                stdout=serr,
                stderr=subprocess.STDOUT,
            )

            def connected() -> bool:
                if zeek.poll() is not None or serve.poll() is not None:
                    raise RuntimeError(
                        f"zeek or dpack serve exited: {(workdir / 'zeek.stderr').read_text()[-2000:]}"
                        f"{(workdir / 'serve.log').read_text()[-2000:]}"
                    )
                return metrics(sensor, mport).get("dpack_connected") == 1

            wait_for(connected, 120, "dpack serve to connect to Zeek", step=0.5)
            time.sleep(1.0)  # Zeek's capture is open (it listened before the client came)
            for p in padded:
                subprocess.run(
                    in_ns(w.replay_ns, ["tcpreplay", "-q", "-i", w.replay_dev, str(p)]),
                    check=True,
                    capture_output=True,
                    timeout=3600,
                )
            time.sleep(settle)
            run.metrics.append(metrics(sensor, mport))
        finally:
            stop(zeek, signal.SIGTERM, 60)
            stop(serve, signal.SIGTERM, 60)
            for fh in (zerr, zout, serr):
                fh.close()
    run.zeek_stderr = (workdir / "zeek.stderr").read_text()
    run.serve_logs.append((workdir / "serve.log").read_text())
    for p in padded:
        p.unlink()
    return run


# --- a real cluster ------------------------------------------------------------------------------------

CLUSTER_LAYOUT = """\
redef Cluster::manager_is_logger = F;
redef Cluster::nodes = {{
	["logger-1"] = [$node_type=Cluster::LOGGER, $ip=127.0.0.1, $p={log_port}/tcp],
	["manager"] = [$node_type=Cluster::MANAGER, $ip=127.0.0.1],
	["proxy-1"] = [$node_type=Cluster::PROXY, $ip=127.0.0.1, $manager="manager"],
	["worker-1"] = [$node_type=Cluster::WORKER, $ip=127.0.0.1, $manager="manager"],
	["worker-2"] = [$node_type=Cluster::WORKER, $ip=127.0.0.1, $manager="manager"],
}};
"""

CLUSTER_SITE = """\
@load policy/frameworks/cluster/backend/zeromq/connect
@load dpack
redef exit_only_after_terminate = T;  # the proxy has nothing else to keep it running
redef Log::default_rotation_interval = 0secs;  # (no zeekctl to archive rotated logs)
redef DPack::scorer_shards = 2;
redef DPack::notice_suppression = 0secs;
redef Cluster::Backend::ZeroMQ::listen_xpub_endpoint = "tcp://127.0.0.1:{xpub}";
redef Cluster::Backend::ZeroMQ::listen_xsub_endpoint = "tcp://127.0.0.1:{xsub}";
redef Cluster::Backend::ZeroMQ::connect_xpub_endpoint = "tcp://127.0.0.1:{xsub}";
redef Cluster::Backend::ZeroMQ::connect_xsub_endpoint = "tcp://127.0.0.1:{xpub}";

@if ( Cluster::local_node_type() == Cluster::MANAGER )
event zeek_init()
	{{
	Cluster::listen_websocket(Cluster::WebSocketServerOptions($listen_addr=127.0.0.1, $listen_port={ws}/tcp));
	}}
@endif

event zeek_done()
	{{
	local f = open(fmt("zeromq-drops-%s.txt", Cluster::node));
	for ( _, m in Telemetry::collect_metrics("zeek", "cluster_zeromq_*drops*") )
		print f, fmt("%s %s", m$opts$name, m?$value ? m$value : 0.0);
	close(f);
	}}
"""


@dataclass
class ClusterRun(LiveRun):
    drops: dict[str, dict[str, float]] = field(default_factory=dict)  # node -> ZeroMQ drop counter -> value
    shard_sources: list[set[str]] = field(default_factory=list)  # per dpack serve shard: originators seen


def split_by_flow(capture: Path, outs: Sequence[Path]) -> None:
    """Deal a capture's frames to ``len(outs)`` captures by a hash of each frame's flow (both directions of
    a flow together, as a NIC's symmetric flow hashing spreads traffic over a cluster's workers); records
    keep their wire lengths."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import pcaprec

    from dpack.traffic.sharding import shard_of

    linktype, snaplen, records = pcaprec.read(capture)
    parts: list[list[Any]] = [[] for _ in outs]
    for r in records:
        parts[shard_of(linktype, r.data, len(outs))].append(r)
    for part, out in zip(parts, outs, strict=True):
        pcaprec.write(out, part, linktype, snaplen)


def run_cluster(capture: Path, workdir: Path, settle: float = 8.0) -> ClusterRun:
    """Manager (with the WebSocket listener and the ZeroMQ proxy thread), proxy, two workers and a logger
    on Zeek 8's ZeroMQ backend, started without zeekctl (a cluster layout and CLUSTER_NODE), each worker
    on its own veth with half of the capture (dealt by flow); two ``dpack serve`` shards on the manager's
    WebSocket listener. (A logger of its own: a manager that is also the logger binds the log socket in
    every WebSocket client's backend too, and the second bind fails - Zeek 8.0.10.)"""
    workdir.mkdir(parents=True, exist_ok=True)
    site = site_dir(workdir)
    halves = [workdir / f"half-{i}.pcap" for i in range(2)]
    split_by_flow(capture, halves)
    padded = [padded_copy(h, workdir / f"replay-{i}.pcap") for i, h in enumerate(halves)]
    ws, log_port, xpub, xsub = (free_port() for _ in range(4))
    (site / "cluster-layout.zeek").write_text(CLUSTER_LAYOUT.format(log_port=log_port))
    (site / "local-cluster.zeek").write_text(CLUSTER_SITE.format(ws=ws, xpub=xpub, xsub=xsub))
    mports = [free_port(), free_port()]
    run = ClusterRun(workdir, workdir / "logger-1", 2)
    env = zeek_env(site)
    with namespaces(2) as (sensor, wires):
        procs: dict[str, subprocess.Popen[Any]] = {}
        serves: list[subprocess.Popen[Any]] = []
        files = []
        try:
            for name in ("manager", "logger-1", "proxy-1", "worker-1", "worker-2"):
                d = workdir / name
                d.mkdir(exist_ok=True)
                argv = ["zeek"]
                if name.startswith("worker"):
                    argv += ["-i", wires[int(name[-1]) - 1].sensor_dev]
                out = open(d / "stdout", "w")
                files.append(out)
                procs[name] = subprocess.Popen(
                    in_ns(sensor, [*argv, "local-cluster"]),
                    cwd=d,
                    env={**env, "CLUSTER_NODE": name},
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
                if name == "manager":
                    time.sleep(2.0)  # its XPUB/XSUB proxy and log endpoint first
            for i in range(2):
                cfg = {
                    "zeek": {
                        "url": f"ws://127.0.0.1:{ws}/v1/messages/json",
                        "topic": f"dpack/samples/{i}",
                        "reconnect_max": 1.0,
                    },
                    "serve": {
                        "metrics_port": mports[i],
                        "alerts": str(workdir / f"alerts-{i}.jsonl"),
                        "alerts_all": True,
                        "log_interval": 5.0,
                        "guard": "off",  # as run_live
                    },
                }
                (workdir / f"dpack-{i}.yaml").write_text(json.dumps(cfg))
                log = open(workdir / f"serve-{i}.log", "w")
                files.append(log)
                serves.append(
                    subprocess.Popen(
                        in_ns(sensor, [*dpack_cmd(), "serve", "--config", str(workdir / f"dpack-{i}.yaml")]),
                        cwd=workdir,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                )

            def ready() -> bool:
                for name, p in procs.items():
                    if p.poll() is not None:
                        raise RuntimeError(
                            f"{name} exited: {(workdir / name / 'stdout').read_text()[-2000:]}"
                        )
                return all(metrics(sensor, m).get("dpack_connected") == 1 for m in mports)

            wait_for(ready, 120, "the cluster and both dpack serve shards", step=0.5)
            time.sleep(3.0)  # the workers' subscriptions reach the proxy thread
            replays = [
                subprocess.Popen(
                    in_ns(w.replay_ns, ["tcpreplay", "-q", "-i", w.replay_dev, str(p)]),
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                for w, p in zip(wires, padded, strict=True)
            ]
            for r in replays:
                r.wait(timeout=3600)
            time.sleep(settle)
            run.metrics = [metrics(sensor, m) for m in mports]
        finally:
            for name in ("worker-1", "worker-2", "proxy-1"):
                stop(procs.get(name), signal.SIGTERM, 60)
            time.sleep(2.0)  # the workers' last log writes reach the logger
            stop(procs.get("manager"), signal.SIGTERM, 60)
            stop(procs.get("logger-1"), signal.SIGTERM, 60)
            for p in serves:
                stop(p, signal.SIGTERM, 60)
            for fh in files:
                fh.close()
    run.zeek_stderr = "".join((workdir / n / "stdout").read_text() for n in procs)
    run.serve_logs = [(workdir / f"serve-{i}.log").read_text() for i in range(2)]
    for name in procs:
        path = workdir / name / f"zeromq-drops-{name}.txt"
        if path.exists():
            run.drops[name] = {
                k: float(v) for k, v in (ln.rsplit(" ", 1) for ln in path.read_text().splitlines())
            }
    for i in range(2):
        alerts = workdir / f"alerts-{i}.jsonl"
        lines = alerts.read_text().splitlines() if alerts.exists() else []
        run.shard_sources.append({json.loads(line)["source"]["ip"] for line in lines})
    for p in (*halves, *padded):
        p.unlink()
    return run


# --- comparing live with offline ------------------------------------------------------------------------


def offline_verdicts(captures: Sequence[Path], out: Path, extra: Sequence[str] = ()) -> list[dict[str, Any]]:
    """``dpack score`` on each capture (the real command), verdict lines in capture order."""
    rows: list[dict[str, Any]] = []
    for i, c in enumerate(captures):
        path = out.with_name(f"{out.stem}-{i}.jsonl")
        subprocess.run(
            [*dpack_cmd(), "score", str(c), "--verdicts", str(path), "--explain", "all", *extra],
            check=True,
            capture_output=True,
            timeout=3600,
        )
        rows += [json.loads(line) for line in path.read_text().splitlines()]
    return rows


def _key(proto: str, src: str, sport: int, dst: str, dport: int) -> tuple[str, str, int, str, int]:
    return (proto, src, int(sport), dst, int(dport))


@dataclass
class Agreement:
    """Live (Zeek + dpack serve) against offline (``dpack score``) on the same flows."""

    conns: int = 0  # TCP/UDP/ICMP connections in conn.log
    verdicts: int = 0  # prefix verdicts in dpack.log
    conns_without_verdict: int = 0
    conns_with_several: int = 0
    matched: int = 0  # live verdicts matched to an offline verdict of the same flow
    same: int = 0  # ... with the same anomalous flag
    live_only_flagged: int = 0
    offline_only_flagged: int = 0
    live_unmatched: int = 0  # live verdicts with no offline flow of the same 5-tuple
    offline_unmatched: int = 0
    notices: int = 0
    live_flagged: int = 0
    differing: list[dict[str, Any]] = field(default_factory=list)

    @property
    def share(self) -> float:
        return self.same / self.matched if self.matched else 0.0

    def summary(self) -> str:
        return (
            f"connections {self.conns}, prefix verdicts {self.verdicts} (without one: "
            f"{self.conns_without_verdict}, with several: {self.conns_with_several}); matched to dpack "
            f"score {self.matched} (unmatched live {self.live_unmatched}, offline "
            f"{self.offline_unmatched}); same verdict {self.same} = {self.share:.4%}; flagged live "
            f"{self.live_flagged}, notices {self.notices}; live-only flagged {self.live_only_flagged}, "
            f"offline-only flagged {self.offline_only_flagged}"
        )


def agreement(run: LiveRun, offline: Sequence[dict[str, Any]]) -> Agreement:
    """Match each live verdict to the offline verdict of the same flow: same 5-tuple, k-th occurrence in
    time order on both sides (a 5-tuple reused later is a later flow on both sides)."""
    a = Agreement()
    conns = [c for c in run.log("conn") if c.get("proto") in ("tcp", "udp", "icmp")]
    a.conns = len(conns)
    verdicts = [v for v in run.log("dpack") if v.get("detector", "prefix") == "prefix"]
    a.verdicts = len(verdicts)
    per_uid = Counter(v["uid"] for v in verdicts)
    a.conns_without_verdict = sum(1 for c in conns if per_uid.get(c["uid"], 0) == 0)
    a.conns_with_several = sum(1 for n in per_uid.values() if n > 1)
    a.notices = sum(1 for n in run.log("notice") if n.get("note") == "DPack::Anomalous_Flow")
    a.live_flagged = sum(1 for v in verdicts if v["anomalous"] == "T")
    start = {c["uid"]: float(c["ts"]) for c in conns}
    proto = {c["uid"]: c["proto"] for c in conns}
    live: dict[tuple[Any, ...], list[dict[str, str]]] = defaultdict(list)
    for v in sorted(verdicts, key=lambda v: start.get(v["uid"], float(v["ts"]))):
        p = proto.get(v["uid"], "")
        live[_key(p, v["id.orig_h"], int(v["id.orig_p"]), v["id.resp_h"], int(v["id.resp_p"]))].append(v)
    off: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
    for o in offline:  # conn.log says icmp for ICMPv6 too
        p = "icmp" if o["proto"] == "icmp6" else o["proto"]
        off[_key(p, o["src"], o["sport"], o["dst"], o["dport"])].append(o)
    for k, lv in live.items():
        ov = off.get(k, [])
        a.live_unmatched += max(0, len(lv) - len(ov))
        for i, v in enumerate(lv[: len(ov)]):
            o = ov[i]
            a.matched += 1
            flag = v["anomalous"] == "T"
            if flag == o["anomalous"]:
                a.same += 1
            else:
                if flag:
                    a.live_only_flagged += 1
                else:
                    a.offline_only_flagged += 1
                a.differing.append({"key": k, "live": v, "offline": o})
    for k, ov in off.items():
        a.offline_unmatched += max(0, len(ov) - len(live.get(k, [])))
    return a


def labels_of(captures: Sequence[Path]) -> dict[tuple[Any, ...], str]:
    """5-tuple -> family, from the ``NAME.labels.csv`` beside each capture (lab-dev format)."""
    fam: dict[tuple[Any, ...], str] = {}
    for c in captures:
        name = c.name.removesuffix(".gz").removesuffix(".pcap")
        path = c.with_name(f"{name}.labels.csv")
        if path.exists():
            with open(path, newline="") as fh:
                for r in csv.DictReader(fh):
                    fam[_key(r["proto"], r["src"], r["sport"], r["dst"], r["dport"])] = r["family"]
    return fam


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=("live", "flows", "cluster"))
    ap.add_argument("captures", nargs="+", type=Path)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--transport", choices=("websocket", "broker"), default="websocket")
    ap.add_argument("--keep", help="keep the run's files in this directory")
    ap.add_argument("--no-pad", action="store_true", help="replay the captured bytes only (see above)")
    args = ap.parse_args(argv)
    if args.mode == "flows":
        if zeek_bin() is None:
            print("zeeklab: cannot run: no zeek on PATH", file=sys.stderr)
            return 2
        with tempfile.TemporaryDirectory() as tmp:
            for cap in args.captures:
                zs, differ, late = compare_flows(cap, Path(tmp) / cap.name)
                print(
                    f"{cap}: {len(zs)} samples exported by Zeek, {len(differ)} differ from dpack's flows "
                    f"(Zeek's wait timers up to {late:.3f} s late)"
                )
                for d in differ[:20]:
                    print("  ", *d)
        return 0
    why = missing_for_live()
    if why:
        print(f"zeeklab: cannot run: {why}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.keep) if args.keep else Path(tmp)
        t = time.monotonic()
        if args.mode == "cluster":
            run = run_cluster(args.captures[0], work)
            print("ZeroMQ drop counters:", run.drops)
            print(
                "originators per shard:",
                [len(x) for x in run.shard_sources],
                "shared:",
                len(run.shard_sources[0] & run.shard_sources[1]),
            )
        else:
            run = run_live(args.captures, work, args.transport, args.workers, pad=not args.no_pad)
        print(f"replayed in {time.monotonic() - t:.0f} s; zeek stderr: {run.zeek_stderr.strip()[-500:]}")
        offline = offline_verdicts(args.captures, work / "offline.jsonl")
        a = agreement(run, offline)
        print(a.summary())
        m = run.metrics[-1] if run.metrics else {}
        print(
            "serve:",
            {
                k: v
                for k, v in m.items()
                if k.startswith("dpack_")
                and ("dropped" in k or "scored" in k or "flagged" in k or "malformed" in k or "skipped" in k)
            },
        )
        fam = labels_of(args.captures)
        by = Counter(
            (fam.get(d["key"], "?"), "live" if d["live"]["anomalous"] == "T" else "offline")
            for d in a.differing
        )
        print("differing by family and which side flagged:", dict(by))
        for d in a.differing[:20]:
            print(
                " ",
                d["key"],
                "live",
                d["live"]["score"],
                d["live"].get("explanation"),
                "| offline",
                d["offline"]["score"],
                d["offline"]["explanation"],
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
