"""Distribution-shift experiments on lab-dev connection records (the figures in the README).

1. Group vs random split: the same classifiers, 5-fold, once with rows shuffled into folds and once with
   every (source, target) host pair on one side; with and without the segment features.
2. CMD: the flow-record autoencoder trained on benign-train, with and without the Central Moment
   Discrepancy penalty toward the first half (by time) of benign-val, used unlabeled; false positives
   are counted on the second half of benign-val only, detection on attack-dev.

Usage: python tools/shift_experiments.py [../shared/datasets/lab-dev]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from dpack.records.crossval import crossval
from dpack.records.features import (
    SEGMENT_NUMERIC,
    lab_table,
    labelled_records,
    record_table,
    records_from_capture,
)
from dpack.records.recordae import RecordAEOptions, fit_record_ae


def split_gap(folder: Path) -> None:
    t = lab_table(folder)
    print(
        f"lab-dev records (benign-train + attack-dev): {len(t)} rows, {len(set(t.groups))} host-pair groups"
    )
    print(
        f"{'features':<18} {'split':<7} {'model':<14} {'accuracy':>9} {'detection':>10} {'f1':>7} {'fpr':>8}"
    )
    for feats, table in (("with segments", t), ("without segments", t.without(SEGMENT_NUMERIC))):
        for split in ("random", "group"):
            res = crossval(table, "binary", 5, ["logreg", "random_forest"], split)
            for m, r in res.per_model.items():
                print(
                    f"{feats:<18} {split:<7} {m:<14} {r['accuracy']:>9.4f} {r['detection_rate']:>10.4f} "
                    f"{r['f1']:>7.4f} {r['fpr']:>8.4f}"
                )


def cmd_effect(folder: Path) -> None:
    train = record_table(records_from_capture(folder / "benign-train.pcap.gz"))
    val = sorted(records_from_capture(folder / "benign-val.pcap.gz"), key=lambda r: r.ts)
    half = len(val) // 2
    target, held = record_table(val[:half]), record_table(val[half:])
    attacks = labelled_records([folder / "attack-dev.pcap.gz"])
    att = record_table(attacks.records)
    print(
        f"\nCMD: train {len(train)} benign-train records; target {len(target)} (first half of benign-val, "
        f"unlabeled); test {len(held)} benign (second half) + {len(att)} attack"
    )
    print(f"{'cmd weight':>10} {'threshold':>10} {'fpr':>8} {'detection':>10}")
    for w in (0.0, 1.0, 10.0):
        det = fit_record_ae(train, RecordAEOptions(cmd_weight=w), target if w > 0 else None)
        fpr = float((det.scores(held) > det.threshold).mean())
        dr = float((det.scores(att) > det.threshold).mean())
        print(f"{w:>10.1f} {det.threshold:>10.4g} {fpr:>8.4f} {dr:>10.4f}")


def main() -> None:
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/datasets/lab-dev")
    np.set_printoptions(precision=4)
    split_gap(folder)
    cmd_effect(folder)


if __name__ == "__main__":
    main()
