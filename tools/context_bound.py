"""How much of each attack family any host-context detector can catch without flagging a new benign host.

    python tools/context_bound.py CAPTURE LABELS.csv --model MODEL_WITH_STAGE

Every column the stage reads (the prefix score and the ``host.*`` features) is one-sided: larger is more
unusual. A detector that is monotone in them - the shipped stage is, for hosts it has no level of
their own for - cannot flag a flow without also flagging every flow whose columns are all at least as
large. So an attack flow that some flow of a *new* benign host (one without a level in the model, e.g.
tools/synth_families.py's load-test host) dominates can be caught only by flagging that benign flow
too. This prints, per attack family, the share of its flows no such benign flow dominates (the most a
detector that leaves new benign hosts alone can catch) and the first flow of the family it could
catch. Rows are built by the code ``dpack score`` uses (sensor order, the stage's host state).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugin"))

from dpack.context.stage import context_rows
from dpack.context.state import HostState
from dpack.offline.evaluate import labelled_pcap
from dpack.prefix.modelfile import load_model
from dpack.prefix.scorer import Scorer, verdicts_in_sensor_order


def bound(rows: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """(A,) bool: rows that no reference row dominates (every column of it >=)."""
    out = np.ones(len(rows), dtype=bool)
    for i, r in enumerate(rows):
        out[i] = not bool((reference >= r).all(axis=1).any())
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("capture")
    ap.add_argument("labels")
    ap.add_argument("--model", required=True, help="a model file with a host-context stage")
    a = ap.parse_args(argv)
    model = load_model(a.model)
    if model.context is None:
        ap.error(f"{a.model} has no host-context stage (dpack train-context adds one)")
    data = labelled_pcap(a.capture, a.labels, model.spec)
    order, verdicts = verdicts_in_sensor_order(Scorer(model, explain="none"), data.flows)
    rows, hosts = context_rows(HostState(model.context.key), verdicts)
    attack = data.is_attack[order]
    fam = np.array([data.family[i] for i in order.tolist()])
    new = np.array([h not in model.context.levels for h in hosts])
    ref = rows[~attack & new]
    ref_fams = sorted(set(fam[~attack & new].tolist()))
    print(f"reference: {len(ref)} benign flows of hosts new to the stage ({', '.join(ref_fams) or 'none'})")
    print(f"{'family':<20} {'flows':>6} {'catchable':>10} {'first catchable flow':>21}")
    for f in sorted(set(fam[attack].tolist())):
        sel = fam == f
        ok = bound(rows[sel], ref) if len(ref) else np.ones(int(sel.sum()), dtype=bool)
        first = int(np.argmax(ok)) if ok.any() else None
        print(f"{f:<20} {int(sel.sum()):>6} {ok.mean():>10.1%} {first if first is not None else '-':>21}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
