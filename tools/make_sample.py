"""Cut the demo sample capture from lab-dev's validation files (never from benign-train).

    python tools/make_sample.py ../shared/datasets/lab-dev samples/

Takes a 40 s window of benign-val and the first few flows of each attack family from attack-dev, shifted in
time into that window; writes ``lab-sample.pcap.gz`` and ``lab-sample.labels.csv`` (lab-dev format). Labels
follow the lab's rule: the initiator's address decides through ``address-plan.tsv``; benign flows keep
their family from benign-val's labels (``benign_partial`` for flows that began before the window).
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugin"))
import pcaprec

from dpack.traffic.capture import read_capture
from dpack.traffic.encode import PrefixSpec
from dpack.traffic.flows import FlowSample, flows_from_frames

WINDOW = 40.0
START = 60.0  # seconds into benign-val
PER_FAMILY = {"hping_syn_flood": 40, "nmap_syn": 40, "nmap_connect": 40, "hydra_ssh": 12, "slowloris": 20}
SPEC = PrefixSpec(1, 80, "first")  # only the flow identities matter here


def key(s: FlowSample) -> tuple[str, str, str, int, str, int]:
    return (f"{s.ts:.6f}", s.proto_name, s.src, s.sport, s.dst, s.dport)


def read_labels(path: Path) -> dict[tuple, str]:
    with open(path) as fh:
        return {
            (r["ts_first"], r["proto"], r["src"], int(r["sport"]), r["dst"], int(r["dport"])): r["family"]
            for r in csv.DictReader(fh)
        }


def _pair(rec: pcaprec.Record) -> object:
    """Direction-free 5-tuple of a frame (None for non-IP)."""
    from dpack.traffic.packets import ip_offset, parse_ip

    off = ip_offset(rec.data, 1)
    p = parse_ip(rec.data, off) if off >= 0 else None
    return p and (p.proto, frozenset({(p.src, p.sport), (p.dst, p.dport)}))


def _frames(recs: list[pcaprec.Record]) -> list[tuple[float, int, bytes]]:
    return [(r.ts, 1, r.data) for r in recs]


def main(src: Path, dst: Path) -> None:
    plan = {}
    for line in (src / "address-plan.tsv").read_text().splitlines():
        if line and not line.startswith("#"):
            ip, label, tag, _host = line.split("\t", 3)
            plan[ip] = (label, tag)

    benign = list(pcaprec.read(src / "benign-val.pcap.gz")[2])
    t0 = benign[0].ts
    # Only flows that start inside the window: a flow caught mid-way (no SYN) is a capture artefact.
    before = {_pair(f) for f in benign if t0 + START - 60.0 <= f.ts < t0 + START}
    window = [f for f in benign if t0 + START <= f.ts < t0 + START + WINDOW and _pair(f) not in before]
    lo, hi = window[0].ts, window[-1].ts

    # Attack flows: the first PER_FAMILY flows of each family, with all their packets.
    attack = list(pcaprec.read(src / "attack-dev.pcap.gz")[2])
    attack_labels = read_labels(src / "attack-dev.labels.csv")
    wanted: dict[tuple, str] = {}
    left = dict(PER_FAMILY)
    for s in flows_from_frames(_frames(attack), SPEC):
        fam = attack_labels.get(key(s), "")
        if left.get(fam, 0) > 0:
            left[fam] -= 1
            wanted[(s.proto, frozenset({(s.src, s.sport), (s.dst, s.dport)}))] = fam
    from dpack.traffic.keys import addr_text
    from dpack.traffic.packets import ip_offset, parse_ip

    picked: dict[str, list[pcaprec.Record]] = {}
    for r in attack:
        off = ip_offset(r.data, 1)
        p = parse_ip(r.data, off) if off >= 0 else None
        fam = p and wanted.get(
            (p.proto, frozenset({(addr_text(p.src), p.sport), (addr_text(p.dst), p.dport)}))
        )
        if fam:
            picked.setdefault(fam, []).append(r)
    merged = list(window)
    for i, fam in enumerate(sorted(picked)):  # each family starts a few seconds after the previous one
        shift = lo + 3.0 + 4.0 * i - picked[fam][0].ts
        merged += [r._replace(ts=r.ts + shift) for r in picked[fam] if r.ts + shift <= hi]
    merged.sort(key=lambda r: r.ts)

    dst.mkdir(parents=True, exist_ok=True)
    out = dst / "lab-sample.pcap.gz"
    pcaprec.write(out, merged)  # wire lengths kept (see pcaprec)

    benign_labels = read_labels(src / "benign-val.labels.csv")
    rows = []
    for s in flows_from_frames(read_capture(out), SPEC):
        label, tag = plan.get(s.src, ("benign", ""))
        if label == "server":  # flows a server starts take the other endpoint's label
            label, tag = plan.get(s.dst, ("benign", ""))
        fam = tag if label == "attack" else benign_labels.get(key(s), "benign_partial")
        rows.append([*key(s), 0, label, fam])
    with open(dst / "lab-sample.labels.csv", "w", newline="") as fh:
        wr = csv.writer(fh)
        wr.writerow(["ts_first", "proto", "src", "sport", "dst", "dport", "n_packets", "label", "family"])
        wr.writerows(rows)
    n_attack = sum(r[7] == "attack" for r in rows)
    print(f"{out}: {len(merged)} frames, {len(rows)} flows ({n_attack} attack)")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
