"""Detection per attack family and FPR for N in {1,2,3,4,6} under both prefix policies.

    python tools/sweep_prefix.py ../shared/datasets/lab-dev OUTDIR [--arch fast] [--target-fpr 0.005]

Runs the real CLI for every cell (``dpack train`` on benign-train, ``dpack evaluate --json`` on benign-val +
attack-dev) and prints a Markdown table; the JSON files stay in OUTDIR.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

FAMILIES = ["hping_syn_flood", "nmap_syn", "nmap_connect", "hydra_ssh", "slowloris"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("data")
    ap.add_argument("out")
    ap.add_argument("--arch", default="fast")
    ap.add_argument("--target-fpr", default="0.005")
    ap.add_argument("--packets", default="1,2,3,4,6")
    ap.add_argument("--policies", default="first,payload")
    a = ap.parse_args()
    data, out = Path(a.data), Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    dpack = [sys.executable, "-m", "dpack.cli"]
    rows = []
    for policy in a.policies.split(","):
        for n in a.packets.split(","):
            model = out / f"{a.arch}-{policy}-n{n}.pt"
            js = out / f"{a.arch}-{policy}-n{n}.json"
            subprocess.run(
                [
                    *dpack,
                    "train",
                    str(data / "benign-train.pcap.gz"),
                    "--out",
                    str(model),
                    "--arch",
                    a.arch,
                    "--packets",
                    n,
                    "--policy",
                    policy,
                    "--target-fpr",
                    a.target_fpr,
                ],
                check=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            subprocess.run(
                [
                    *dpack,
                    "evaluate",
                    "--model",
                    str(model),
                    "--benign",
                    str(data / "benign-val.pcap.gz"),
                    "--attack",
                    str(data / "attack-dev.pcap.gz"),
                    "--json",
                    str(js),
                ],
                check=True,
                stdout=subprocess.DEVNULL,
            )
            m = json.loads(js.read_text())
            fam = m["per_family"]
            rows.append(
                [policy, n]
                + [fam[f]["detected"] / fam[f]["flows"] for f in FAMILIES]
                + [m["recall"], m["fpr"], m["auc"]]
            )
            print(f"done {policy} N={n}", file=sys.stderr, flush=True)
    print(f"| policy | N | {' | '.join(FAMILIES)} | all attacks | FPR | AUC |")
    print("|---|---:|" + "---:|" * (len(FAMILIES) + 3))
    for r in rows:
        print(f"| {r[0]} | {r[1]} | " + " | ".join(f"{v:.2%}" for v in r[2:-1]) + f" | {r[-1]:.4f} |")


if __name__ == "__main__":
    main()
