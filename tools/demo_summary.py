"""What `make demo` made, in words an analyst can act on: where the verdicts and the report are, what the
sample holds (so the flagged share is read right), and what to run next. Figures come from the files.

    python tools/demo_summary.py VERDICTS.jsonl REPORT_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    verdicts, report = Path(argv[0]), Path(argv[1])
    lines = verdicts.read_text().splitlines()
    flagged = sum(json.loads(x)["anomalous"] for x in lines)
    rep = json.loads((report / "report.json").read_text())
    c, fam = rep["confusion"], rep["metrics"]["per_family"]
    attacks = c["tp"] + c["fn"]
    benign = c["fp"] + c["tn"]
    att_fams = sorted(f for f in fam if not f.startswith("benign"))
    print(f"""
demo: done.
  {verdicts}  one verdict per flow ({len(lines):,} flows, {flagged:,} anomalous), JSON lines
  {report / "index.html"}  the evaluation: open it in a browser (figures in {report / "report.json"})

  The sample is lab traffic with attacks in it: {attacks:,} of its {len(lines):,} flows are attacks
  ({", ".join(att_fams)}), so {flagged / max(1, len(lines)):.1%} flagged is expected. Of the attack flows
  {c["tp"] / max(1, attacks):.1%} were flagged; of the {benign:,} benign flows {c["fp"]} were (false alarms,
  {c["fp"] / max(1, benign):.2%}). The words after each flagged flow name what made its score:
  .venv/bin/dpack explain p2.tcp.flags tells what a token means.

  Next: .venv/bin/dpack --help; on your own network learn it first (README, "learn the site first").""")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
