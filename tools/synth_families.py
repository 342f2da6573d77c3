"""Attacks whose every flow is an ordinary exchange, built from a capture's own benign exchanges.

    python tools/synth_families.py ../shared/datasets/lab-dev/benign-val.pcap.gz OUT_DIR [--seed 7]

lab-dev has no attack of this kind (every attack there has packets that differ from benign ones). This
tool takes benign exchanges of the capture (HTTP, HTTPS, FTP, SSH, DNS, MQTT, by their labels) and
replays them, byte for byte, re-addressed from new hosts and compressed in time, inside the capture's own
time range (so they interleave with its benign traffic):

- ``http_flood``: one host, 600 HTTP exchanges at 200 per second;
- ``http_bruteforce``: one HTTP exchange repeated 300 times in a minute (a login form, basic auth);
- ``ssh_bruteforce``: one SSH exchange repeated 200 times in a minute;
- ``version_scan``: a slow sweep, one exchange per second to 200 responders, services in turn;
- ``benign_loadtest`` (benign, to make the benign side harder): a load-test host, bursts of 25 short
  HTTP exchanges within half a second, every 20 seconds.

The attackers sit in the same /24 as the capture's benign workstations (10.201.1.201-204; the load-test
host is 10.201.1.230), so an address-block key (/24) would make their neighbours look like them.
Deterministic for a seed. Writes ``synth.pcap`` and ``synth.labels.csv`` (the synthetic flows only) and
``val-synth.pcap`` with ``val-synth.labels.csv``: the input capture (with its labels) merged with them.
Never train on these: they are validation data, and real attacks will use other tools and rates.
"""

from __future__ import annotations

import argparse
import csv
import heapq
import random
import sys
from collections import defaultdict
from pathlib import Path

import dpkt
import pcaprec

FLOOD, HTTP_BF, SSH_BF, SCAN, LOADTEST = (
    "10.201.1.201",
    "10.201.1.202",
    "10.201.1.203",
    "10.201.1.204",
    "10.201.1.230",
)
SCAN_NET = "10.201.0."  # the servers' block: responders .30-.229
SERVICES = {
    "benign_http": 80,
    "benign_https": 443,
    "benign_ftp": 21,
    "benign_ssh": 22,
    "benign_dns": 53,
    "benign_mqtt": 1883,
}


# (microseconds, captured bytes, wire length): a cut capture's records keep the length the packet had on
# the wire, or Zeek drops every packet shorter than its IP length (see tools/pcaprec.py)
Frame = tuple[int, bytes, int]


def read_frames(path: Path) -> list[Frame]:
    """Every frame of a capture."""
    return [(int(round(r.ts * 1e6)), r.data, r.wire_len) for r in pcaprec.read(path)[2]]


def exchanges(frames: list[Frame], labels: Path) -> dict[str, list[list[tuple[int, bytes, bool, int]]]]:
    """Family -> flows, each its frames (us, bytes, from the originator, wire length), for the services
    above; a flow's frames are those of its 5-tuple within 10 s of its first packet."""
    want: dict[tuple[str, int, str, int, str], tuple[int, str]] = {}
    with open(labels, newline="") as fh:
        for row in csv.DictReader(fh):
            if row["family"] in SERVICES and row["proto"] in ("tcp", "udp"):
                key = (row["src"], int(row["sport"]), row["dst"], int(row["dport"]), row["proto"])
                want.setdefault(key, (int(round(float(row["ts_first"]) * 1e6)), row["family"]))
    flows: dict[tuple[str, int, str, int, str], list[tuple[int, bytes, bool, int]]] = defaultdict(list)
    for us, buf, wire in frames:
        eth = dpkt.ethernet.Ethernet(buf)
        ip = eth.data
        if not isinstance(ip, dpkt.ip.IP) or not isinstance(ip.data, (dpkt.tcp.TCP, dpkt.udp.UDP)):
            continue
        proto = "tcp" if isinstance(ip.data, dpkt.tcp.TCP) else "udp"
        s, d = dpkt.utils.inet_to_str(ip.src), dpkt.utils.inet_to_str(ip.dst)
        for key, orig in (
            ((s, ip.data.sport, d, ip.data.dport, proto), True),
            ((d, ip.data.dport, s, ip.data.sport, proto), False),
        ):
            first = want.get(key)
            if first is not None and 0 <= us - first[0] <= 10_000_000:
                flows[key].append((us, buf, orig, wire))
                break
    out: dict[str, list[list[tuple[int, bytes, bool, int]]]] = defaultdict(list)
    for key, frs in flows.items():
        if frs and frs[0][2]:  # starts with the originator's packet
            out[want[key][1]].append(frs)
    for fam in out:
        out[fam].sort(key=lambda f: f[0][0])
    return out


def replay(
    flow: list[tuple[int, bytes, bool, int]], start_us: int, src: str, sport: int, dst: str | None
) -> list[Frame]:
    """The flow's frames from ``start_us`` on, the originator re-addressed to ``src``:``sport`` (and the
    responder to ``dst``), checksums recomputed."""
    t0 = flow[0][0]
    out = []
    for us, buf, orig, wire in flow:
        eth = dpkt.ethernet.Ethernet(buf)
        ip = eth.data
        l4 = ip.data
        if orig:
            ip.src = _a(src)
            l4.sport = sport
            if dst:
                ip.dst = _a(dst)
        else:
            ip.dst = _a(src)
            l4.dport = sport
            if dst:
                ip.src = _a(dst)
        ip.sum = 0
        l4.sum = 0
        ip.data = l4
        eth.data = ip
        out.append((start_us + (us - t0), bytes(eth), wire))
    return out


def _a(addr: str) -> bytes:
    import socket

    return socket.inet_aton(addr)


def build(
    frames: list[Frame], ex: dict[str, list[list[tuple[int, bytes, bool, int]]]], seed: int
) -> tuple[list[Frame], list[dict[str, object]]]:
    rng = random.Random(seed)
    t0 = frames[0][0]
    span = frames[-1][0] - t0
    made: list[Frame] = []
    labels: list[dict[str, object]] = []
    ports = iter(range(20000, 65000))

    def add(
        flow: list[tuple[int, bytes, bool, int]],
        at: int,
        src: str,
        fam: str,
        label: str,
        dst: str | None = None,
    ) -> None:
        sport = next(ports)
        frs = replay(flow, at, src, sport, dst)
        made.extend(frs)
        first = dpkt.ethernet.Ethernet(frs[0][1]).data
        labels.append(
            {
                "ts_first": f"{at / 1e6:.6f}",
                "proto": "tcp" if isinstance(first.data, dpkt.tcp.TCP) else "udp",
                "src": src,
                "sport": sport,
                "dst": dpkt.utils.inet_to_str(first.dst),
                "dport": first.data.dport,
                "n_packets": len(frs),
                "label": label,
                "family": fam,
            }
        )

    http = [f for f in ex["benign_http"] if len(f) >= 6]
    start = t0 + int(span * 0.12)
    for i in range(600):  # 200 per second
        add(rng.choice(http), start + i * 5_000 + rng.randrange(1000), FLOOD, "http_flood", "attack")
    login = rng.choice(http)
    start = t0 + int(span * 0.25)
    for i in range(300):  # one exchange, 300 times in 60 s
        add(login, start + i * 200_000 + rng.randrange(20_000), HTTP_BF, "http_bruteforce", "attack")
    ssh = [f for f in ex["benign_ssh"] if len(f) >= 8]
    one = rng.choice(ssh)
    start = t0 + int(span * 0.45)
    for i in range(200):
        add(one, start + i * 300_000 + rng.randrange(30_000), SSH_BF, "ssh_bruteforce", "attack")
    fams = [f for f in SERVICES if ex.get(f)]
    start = t0 + int(span * 0.05)
    for i in range(200):  # 1 per second, 200 responders, services in turn
        fam = fams[i % len(fams)]
        add(
            rng.choice(ex[fam]),
            start + i * 1_000_000,
            SCAN,
            "version_scan",
            "attack",
            dst=f"{SCAN_NET}{30 + i}",
        )
    for b in range(12):  # a benign load test: 25 exchanges in 0.5 s every 20 s
        at = t0 + int(span * 0.02) + b * 20_000_000
        for j in range(25):
            add(rng.choice(http), at + j * 20_000, LOADTEST, "benign_loadtest", "benign")
    made.sort(key=lambda x: x[0])
    return made, labels


def write_pcap(path: Path, frames: list[Frame]) -> None:
    pcaprec.write(path, (pcaprec.Record(us / 1e6, buf, wire) for us, buf, wire in frames), snaplen=65535)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("capture", type=Path, help="benign capture with NAME.labels.csv beside it")
    ap.add_argument("out", type=Path, help="directory for synth.* and val-synth.*")
    ap.add_argument(
        "--also", type=Path, nargs="*", default=[], help="more labelled captures to merge (attack-dev)"
    )
    ap.add_argument("--seed", type=int, default=7)
    a = ap.parse_args(argv)
    stem = a.capture.name.split(".")[0]
    labels_path = a.capture.with_name(stem + ".labels.csv")
    frames = read_frames(a.capture)
    made, labels = build(frames, exchanges(frames, labels_path), a.seed)
    a.out.mkdir(parents=True, exist_ok=True)
    write_pcap(a.out / "synth.pcap", made)
    cols = ["ts_first", "proto", "src", "sport", "dst", "dport", "n_packets", "label", "family"]
    with open(a.out / "synth.labels.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, cols)
        w.writeheader()
        w.writerows(labels)
    merged_sources = [frames, made] + [read_frames(p) for p in a.also]
    write_pcap(a.out / "val-synth.pcap", list(heapq.merge(*merged_sources, key=lambda x: x[0])))
    with open(a.out / "val-synth.labels.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, cols, extrasaction="ignore")
        w.writeheader()
        for p in [labels_path] + [q.with_name(q.name.split(".")[0] + ".labels.csv") for q in a.also]:
            with open(p, newline="") as src:
                w.writerows(csv.DictReader(src))
        w.writerows(labels)
    fam_counts: dict[str, int] = defaultdict(int)
    for row in labels:
        fam_counts[str(row["family"])] += 1
    print(
        f"{len(labels)} synthetic flows ({', '.join(f'{k} {v}' for k, v in sorted(fam_counts.items()))}); "
        f"{len(made)} frames; written to {a.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
