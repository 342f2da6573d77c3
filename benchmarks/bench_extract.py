"""Prefix extraction speed against a bare parse loop over the same capture.

    python benchmarks/bench_extract.py [CAPTURE ...]

Default captures: lab-dev benign-val and attack-dev (decompressed into memory first, so gzip is not
measured). Three loops over the same frames, each timed once after a warm-up:
  bare   dpkt's pcap reader + Ethernet/IP/TCP decode of every frame (what a plain dpkt script does);
  read   dpack's capture reader alone;
  prefix dpack's full path: reader, flow table, and ``encode_flow`` of every flow (the model input).
Prints packets/s and flows/s and the ratio prefix/bare. Nothing is asserted.
"""

from __future__ import annotations

import gzip
import io
import sys
import tempfile
import time
from pathlib import Path

import dpkt

from dpack.traffic.capture import read_capture
from dpack.traffic.encode import PrefixSpec, encode_flow
from dpack.traffic.flows import FlowTable

ROOT = Path(__file__).resolve().parents[1]
LAB = ROOT.parent / "shared" / "datasets" / "lab-dev"


def bare(raw: bytes) -> int:
    n = 0
    for _ts, buf in dpkt.pcap.Reader(io.BytesIO(raw)):
        eth = dpkt.ethernet.Ethernet(buf)
        ip = eth.data
        if isinstance(ip, dpkt.ip.IP):
            _ = ip.data
        n += 1
    return n


def prefix(path: str, spec: PrefixSpec) -> tuple[int, int]:
    table = FlowTable(spec)
    frames = flows = 0
    for ts, lt, fr in read_capture(path):
        frames += 1
        for s in table.add(ts, lt, fr):
            encode_flow(s.frames, spec)
            flows += 1
    for s in table.flush():
        encode_flow(s.frames, spec)
        flows += 1
    return frames, flows


def timed(fn, *a):
    t = time.perf_counter()
    r = fn(*a)
    return r, time.perf_counter() - t


def main() -> None:
    paths = sys.argv[1:] or [str(LAB / "benign-val.pcap.gz"), str(LAB / "attack-dev.pcap.gz")]
    spec = PrefixSpec(3, 80, "payload")
    print(
        f"{'capture':<22} {'frames':>8} {'flows':>7} {'bare pkt/s':>11} {'read pkt/s':>11} "
        f"{'prefix pkt/s':>12} {'flows/s':>9} {'prefix/bare':>11}"
    )
    for p in paths:
        raw = gzip.decompress(Path(p).read_bytes()) if p.endswith(".gz") else Path(p).read_bytes()
        with tempfile.NamedTemporaryFile(suffix=".pcap") as tmp:
            tmp.write(raw)
            tmp.flush()
            bare(raw[:24] + b"")  # warm-up: imports and dpkt classes
            n, t_bare = timed(bare, raw)
            _, t_read = timed(lambda: sum(1 for _ in read_capture(tmp.name)))
            (frames, flows), t_pref = timed(prefix, tmp.name, spec)
        print(
            f"{Path(p).name:<22} {frames:>8} {flows:>7} {n / t_bare:>11,.0f} {frames / t_read:>11,.0f} "
            f"{frames / t_pref:>12,.0f} {flows / t_pref:>9,.0f} {t_bare / t_pref:>11.2f}"
        )


if __name__ == "__main__":
    main()
