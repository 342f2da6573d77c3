"""End-to-end ``dpack score`` throughput with the shipped default model.

    python benchmarks/bench_score.py [CAPTURE ...]

Runs the real command (``python -m dpack.cli score CAPTURE --verdicts FILE``) on each capture, with one
process and with the default (one per core),
decompressed first, and reads the flows/s it reports (timed from the first frame read to the last verdict
written, so interpreter and torch start-up are excluded; the wall time of the whole process is shown too).
Default captures: lab-dev benign-val, attack-dev, and the two merged (the evaluation mix).
"""

from __future__ import annotations

import gzip
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dpkt

ROOT = Path(__file__).resolve().parents[1]
LAB = ROOT.parent / "shared" / "datasets" / "lab-dev"


def merged(paths: list[Path], out: Path) -> Path:
    frames = []
    for p in paths:
        with gzip.open(p, "rb") as fh:
            frames.extend(dpkt.pcap.Reader(fh))
    frames.sort(key=lambda f: f[0])
    with open(out, "wb") as fh:
        w = dpkt.pcap.Writer(fh, snaplen=256)
        for ts, buf in frames:
            w.writepkt(buf, ts=ts)
    return out


def main() -> None:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if sys.argv[1:]:
            caps = [Path(p) for p in sys.argv[1:]]
        else:
            bv, ad = LAB / "benign-val.pcap.gz", LAB / "attack-dev.pcap.gz"
            caps = []
            for p in (bv, ad):
                out = tmp / p.name.removesuffix(".gz")
                out.write_bytes(gzip.decompress(p.read_bytes()))
                caps.append(out)
            caps.append(merged([bv, ad], tmp / "benign-val+attack-dev.pcap"))
        print(
            f"{'capture':<28} {'workers':>7} {'frames':>7} {'flows':>7} {'flagged':>8} {'flows/s':>9} "
            f"{'frames/s':>9} {'process s':>10}"
        )
        for cap in caps:
            for workers in ("1", "0"):  # one process; one per core (the default)
                t = time.perf_counter()
                r = subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "dpack.cli",
                        "score",
                        str(cap),
                        "--workers",
                        workers,
                        "--verdicts",
                        str(tmp / "v.jsonl"),
                    ],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                wall = time.perf_counter() - t
                m = re.search(
                    r"flows\s+(\d+) scored, (\d+) flagged .* in ([\d.]+) s \(([\d,]+) flows/s\)", r.stdout
                )
                f = re.search(r": (\d+) frames", r.stdout)
                assert m and f, r.stdout
                fps = int(f[1]) / float(m[3])
                label = workers if workers != "0" else f"{os.cpu_count()}*"
                print(
                    f"{cap.name:<28} {label:>7} {f[1]:>7} {m[1]:>7} {m[2]:>8} {m[4]:>9} {fps:>9,.0f} {wall:>10.2f}"
                )
        print("* the default: one worker process per core (scoring.workers: 0)")


if __name__ == "__main__":
    main()
