"""Cut the tiny btest traces (tests/btest/Traces) from the demo sample capture.

    python tools/make_traces.py samples/lab-sample.pcap.gz tests/btest/Traces

``mixed.pcap`` holds four whole connections: one SSH brute-force login attempt (attack), one SYN-scan
probe (attack), one DNS query and one HTTP request (benign).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugin"))
import pcaprec

from dpack.traffic.keys import flow_key
from dpack.traffic.packets import ip_offset, parse_ip

WANT = [("10.201.66.31", 22), ("10.201.66.11", None), ("10.201.1.15", 53), ("10.201.1.11", 80)]


def main() -> None:
    src, out = Path(sys.argv[1]), Path(sys.argv[2])
    _, _, frames = pcaprec.read(src)
    chosen: dict[tuple[object, ...], int] = {}
    keep = []
    for rec in frames:
        buf = rec.data
        p = parse_ip(buf, ip_offset(buf, 1)) if ip_offset(buf, 1) >= 0 else None
        if p is None:
            continue
        key = flow_key(p)
        if key not in chosen:
            sa = ".".join(map(str, p.src))
            for i, (host, port) in enumerate(WANT):
                if i not in chosen.values() and sa == host and (port is None or p.dport == port):
                    chosen[key] = i
        if key in chosen:
            keep.append(rec)
    out.mkdir(parents=True, exist_ok=True)
    pcaprec.write(out / "mixed.pcap", keep)  # wire lengths kept (see pcaprec)
    print(f"{len(keep)} frames, {len(chosen)} connections")


if __name__ == "__main__":
    main()
