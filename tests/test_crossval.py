"""dpack crossval: metric definitions, stratified and group folds, and the command on the real tables."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import ROOT

from dpack.cli import main
from dpack.records.classifier import FitOptions, oversample
from dpack.records.crossval import crossval, folds, metrics
from dpack.records.tables import Table

NSL = ROOT.parent / "shared" / "datasets" / "nsl-kdd"
UNSW = ROOT.parent / "shared" / "datasets" / "unsw-nb15"


def test_metrics_by_hand():
    y = np.array([0, 0, 0, 0, 1, 1, 2, 2])
    p = np.array([0, 0, 0, 2, 1, 2, 2, 0])
    m = metrics(y, p, 3)
    assert m["accuracy"] == pytest.approx(5 / 8)
    assert m["fpr"] == pytest.approx(1 / 4)  # one benign row called an attack
    assert m["detection_rate"] == pytest.approx(3 / 4)  # a wrong attack class still counts as detected
    # weighted F1: benign P=3/4 R=3/4; class 1 P=1 R=1/2; class 2 P=1/3 R=1/2
    f1 = [0.75, 2 / 3, 0.4]
    assert m["f1"] == pytest.approx((4 * f1[0] + 2 * f1[1] + 2 * f1[2]) / 8)
    b = metrics(np.array([0, 1, 1, 0]), np.array([1, 1, 0, 0]), 2)
    assert b["f1"] == pytest.approx(0.5) and b["fpr"] == pytest.approx(0.5)


def synthetic(n=1200, seed=0, shuffle_labels=False):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, size=n)
    x = rng.normal(size=(n, 6)) + y[:, None] * 1.5
    cat = np.where(y == 2, "udp", "tcp")
    if shuffle_labels:
        y = rng.permutation(y)
    groups = np.array([f"g{i % 40}" for i in range(n)])
    return Table("synthetic", x, [f"f{i}" for i in range(6)], {"proto": cat}, y, ["benign", "a", "b"], groups)


def test_crossval_learns_signal_and_not_noise():
    good = crossval(synthetic(), "multiclass", 3, ["logreg", "random_forest"])
    assert good.per_model["random_forest"]["accuracy"] > 0.9
    assert good.per_model["logreg"]["accuracy"] > 0.9
    noise = crossval(synthetic(shuffle_labels=True), "multiclass", 3, ["random_forest"])
    assert noise.per_model["random_forest"]["accuracy"] < 0.5
    assert set(good.as_json()["logreg"]) == {"accuracy", "detection_rate", "f1", "fpr"}


def test_cnn_bilstm_learns_the_synthetic_table():
    t = synthetic(n=1500)
    t.numeric = np.concatenate([t.numeric] * 3, axis=1)  # 18 numeric + 2 one-hot: enough positions to pool
    t.numeric_names = [f"f{i}" for i in range(18)]
    res = crossval(t, "binary", 2, ["cnn_bilstm"], opts=FitOptions(epochs=10, batch_size=64))
    assert res.per_model["cnn_bilstm"]["accuracy"] > 0.9


def test_group_folds_keep_groups_apart():
    t = synthetic()
    for tr, te in folds(t.y_class, 4, "group", t.groups, seed=1):
        assert not set(t.groups[tr]) & set(t.groups[te])
    with pytest.raises(ValueError, match="at least 50 groups"):
        folds(t.y_class, 50, "group", t.groups, seed=1)


def test_oversampling_lifts_rare_classes_only():
    y = np.array([0] * 1000 + [1] * 200 + [2] * 3)
    idx = oversample(y, 0.05, np.random.default_rng(0))
    counts = np.bincount(y[idx])
    assert counts.tolist() == [1000, 200, 50]


@pytest.mark.skipif(not NSL.is_dir(), reason="shared/datasets/nsl-kdd is not beside the repository")
def test_crossval_command_on_nsl_kdd_subset(tmp_path, capsys):
    out = tmp_path / "cv.json"
    rc = main(
        [
            "crossval",
            "--dataset",
            str(NSL / "KDDTrain+_20Percent.txt.gz"),
            "--task",
            "multiclass",
            "--folds",
            "2",
            "--models",
            "logreg,random_forest",
            "--json",
            str(out),
        ]
    )
    assert rc == 0
    text = capsys.readouterr().out
    assert "25192 rows (13449 normal, 9234 DoS, 2289 Probe, 209 R2L, 11 U2R)" in text
    js = json.loads(out.read_text())
    assert set(js) == {"logreg", "random_forest"}
    for m in js.values():
        assert set(m) == {"accuracy", "detection_rate", "f1", "fpr"}
        assert 0.9 < m["accuracy"] <= 1 and 0 <= m["fpr"] < 0.05


@pytest.mark.skipif(not UNSW.is_dir(), reason="shared/datasets/unsw-nb15 is not beside the repository")
def test_unsw_partition_reads_as_documented():
    from dpack.records.crossval import read_table

    t = read_table(UNSW)
    assert len(t) == 82332 and int(t.y_binary.sum()) == 45332
    assert np.bincount(t.y_class).tolist() == [37000, 18871, 11132, 6062, 4089, 3496, 677, 583, 378, 44]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--dataset", "/nonexistent/x", "--task", "binary"], "no such file or folder"),
        (["--dataset", "{tmp}", "--task", "binary"], "neither an NSL-KDD nor a UNSW-NB15 folder"),
        (["--dataset", "{tmp}/t.txt", "--folds", "1"], "--folds must be at least 2"),
        (["--dataset", "{tmp}/t.txt", "--models", "svm"], "unknown model 'svm'"),
    ],
)
def test_crossval_command_errors(tmp_path, capsys, argv, message):
    row = "0,tcp,http,SF" + ",0" * 37 + ",{},21\n"
    (tmp_path / "t.txt").write_text("".join(row.format(lab) for lab in ["normal", "neptune"] * 20))
    rc = main(["crossval", *[a.replace("{tmp}", str(tmp_path)) for a in argv]])
    assert rc == 2 and message in capsys.readouterr().err


def test_holdout_scores_a_second_table():
    from dpack.records.crossval import holdout

    res = holdout(synthetic(seed=0), synthetic(seed=1), "multiclass", ["random_forest"])
    assert res.rows == 1200 and res.per_model["random_forest"]["accuracy"] > 0.9
    other = synthetic(seed=1)
    other.class_names = ["benign", "x", "y"]
    with pytest.raises(ValueError, match="different classes"):
        holdout(synthetic(), other, "binary", ["logreg"])
