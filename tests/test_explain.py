"""Explanation tokens in words: every token the scorer names on real traffic has words, the documented
ones are explained specifically, and ``dpack explain`` says so (exit 1 for a token that is not one)."""

from __future__ import annotations

import re

from conftest import DEFAULT_MODEL, ROOT, SAMPLE

from dpack.cli import main
from dpack.context.state import FEATURES
from dpack.explain import FIELDS, HOST, UNKNOWN, describe
from dpack.prefix.flowset import extract
from dpack.prefix.modelfile import load_model
from dpack.prefix.scorer import Scorer


def test_every_token_the_scorer_names_on_the_sample_has_words():
    model = load_model(DEFAULT_MODEL)
    fs = extract([str(SAMPLE)], model.spec)
    vs = Scorer(model, explain="all", top_k=8).verdicts_encoded(fs.samples, fs.data, fs.direction)
    tokens = {t for v in vs for t in v.explanation}
    assert len(tokens) > 20
    for t in tokens:
        words = describe(t)
        assert words != UNKNOWN and words.startswith(("the flow's first packet", "packet ")), t
    generic = sorted(t for t in tokens if "field; benign: the values" in describe(t))
    # checksums, addresses and the like may stay generic; what analysts see most is explained
    assert not {t for t in generic if re.search(r"\.(tcp\.flags|tcp\.opt|ip\.ttl|absent|pad|direction)$", t)}


def test_the_manual_table_and_the_words_agree():
    manual = (ROOT / "docs" / "manual.md").read_text()
    for feature in FEATURES:
        assert feature in HOST and feature.split("_")[0] in manual
    for field in ("tcp.flags", "tcp.opt", "ip.ttl", "direction", "absent", "pad"):
        assert field in FIELDS and f"p2.{field}" in manual or f"p1.{field}" in manual


def test_dpack_explain_exit_status(capsys):
    assert main(["explain", "p2.tcp.flags", "host.same_service_60s"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("p2.tcp.flags") and "TCP flags" in out[0] and "same responder:port" in out[1]
    assert main(["explain", "p2.tcp.flags", "rm -rf /"]) == 1
    assert UNKNOWN in capsys.readouterr().out
