"""Run dpack's property tests (tests/test_properties.py) with a long, fresh-random budget.

    python tools/fuzz.py              # 5000 examples per property (the "long" profile)
    python tools/fuzz.py -k frame     # only the Zeek-frame properties
    python tools/fuzz.py --examples 50000

CI runs the same properties with the seeded "ci" profile (60 examples each, derandomized). A failure
prints Hypothesis's minimal example; Hypothesis keeps it in .hypothesis/ and replays it first next time."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--examples", type=int, default=5000, help="examples per property (default 5000)")
    ap.add_argument("-k", default="", help="pytest -k expression selecting properties")
    a = ap.parse_args(argv)
    env = dict(os.environ, DPACK_FUZZ="long", DPACK_FUZZ_EXAMPLES=str(a.examples))
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", str(ROOT / "tests" / "test_properties.py")]
    if a.k:
        cmd += ["-k", a.k]
    return subprocess.call(cmd, cwd=ROOT, env=env)


if __name__ == "__main__":
    sys.exit(main())
