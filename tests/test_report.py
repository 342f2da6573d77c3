"""The evaluation report as an analyst opens it: ``dpack evaluate --report`` run as a user runs it, the
page rendered by a real browser (headless Chromium, Debian's; ``make test`` installs it), and the test
reads what the browser made of it - the figures, the tables, the plots decoded - not the file alone."""

from __future__ import annotations

import csv
import html
import json
import re
import shutil
import subprocess
import sys

import pytest
from conftest import ROOT, SAMPLE, need

LABELS = ROOT / "samples" / "lab-sample.labels.csv"


def chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        need("no chromium on PATH (make test installs Debian's)")
    return exe  # type: ignore[return-value]


def render(page, out_png):
    """(the DOM after the page loaded, the screenshot's path), from headless Chromium."""
    exe = chromium()
    base = [
        exe,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--virtual-time-budget=5000",
    ]
    dom = subprocess.run(
        [*base, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120
    ).stdout
    subprocess.run(
        [*base, "--window-size=1200,2400", f"--screenshot={out_png}", page.as_uri()],
        capture_output=True, timeout=120,
    )  # fmt: skip
    return dom, out_png


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """The sample evaluated with a family name that is markup (as a labels file could carry)."""
    d = tmp_path_factory.mktemp("report")
    rows = list(csv.DictReader(open(LABELS, encoding="utf-8-sig")))
    for r in rows:
        if r["family"] == "benign_icmp":
            r["family"] = "<b>icmp</b>"
    labels = d / "labels.csv"
    with open(labels, "w", newline="") as fh:
        w = csv.DictWriter(fh, list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    r = subprocess.run(
        [sys.executable, "-m", "dpack", "evaluate", "--pcap", str(SAMPLE), "--labels", str(labels),
         "--report", str(d / "out")],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    return d / "out", json.loads((d / "out" / "report.json").read_text())


def _cells(dom, heading):
    """The rows of the table under ``heading`` as lists of cell texts."""
    part = dom.split(f"<h2>{heading}</h2>", 1)[1].split("<h2>", 1)[0]
    return [
        [html.unescape(re.sub("<[^>]+>", "", c)) for c in re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", row)]
        for row in re.findall(r"<tr>(.*?)</tr>", part)
    ]


def test_the_report_page_reads_right_in_a_browser(report, tmp_path):
    out, rep = report
    dom, png = render(out / "index.html", tmp_path / "page.png")
    c = rep["confusion"]
    n = c["tp"] + c["fp"] + c["tn"] + c["fn"]
    assert f"<title>dpack evaluation: {rep['model']}</title>" in dom
    head = dict(r for r in _cells(dom, "At the operating point dpack uses") if len(r) == 2)
    assert head["flows"].startswith(f"{n:,} (")
    assert head["attack flows detected"].endswith(f"({c['tp']:,} of {c['tp'] + c['fn']:,})")
    confusion = _cells(dom, "Confusion")
    assert confusion[1:] == [
        ["attack flows", str(c["tp"]), str(c["fn"])],
        ["benign flows", str(c["fp"]), str(c["tn"])],
    ]
    families = {r[0]: r for r in _cells(dom, "Per family")[1:]}
    assert {"hping_syn_flood", "nmap_syn", "benign_dns"} <= set(families)
    assert families["nmap_syn"][1] == "attack" and families["benign_dns"][1] == "benign"
    assert sum(int(r[2].replace(",", "")) for r in families.values()) == n
    # the family name that was markup is text on the page, not an element
    assert "<b>icmp</b>" in families and "<b>icmp</b>" not in dom and "&lt;b&gt;icmp&lt;/b&gt;" in dom
    # the plots were found and decoded by the browser
    loaded = re.findall(r"<img src=\"(\w+\.png)\"[^>]*data-loaded=\"(\d+)\"", dom)
    assert sorted(s for s, _ in loaded) == ["pr.png", "roc.png", "scores.png"] and all(
        int(w) > 300 for _, w in loaded
    )
    # the false alarms and the misses (whichever the sample has: the shipped stage may leave none of one),
    # each flow with what made its score
    shown = 0
    for what, count in (("false alarms", c["fp"]), ("misses", c["fn"])):
        sec = re.search(rf"<h2>(Top (\d+) {what}[^<]*)</h2>", dom)
        assert sec and int(sec.group(2)) == min(10, count), what
        rows = _cells(dom, sec.group(1))
        if count == 0:
            assert rows == [] and ">none</p>" in dom.split(sec.group(1), 1)[1].split("<h2>", 1)[0]
            continue
        assert rows[0][-1] == "what made the score" and len(rows) == 1 + int(sec.group(2))
        assert all(r[-1] not in ("", "-") for r in rows[1:])
        shown += len(rows) - 1
    assert shown > 0
    # and the screenshot is a page, not a blank
    import matplotlib.image

    img = matplotlib.image.imread(png)
    assert img.shape[0] == 2400 and img[..., :3].std() > 0.05


def test_the_roc_plot_has_no_negative_rates_and_names_its_operating_point(report):
    """What the old plot got wrong: a symlog axis with negative false-positive ticks, an unlabelled line.
    The axes as matplotlib drew them (report.json): log scale from one benign flow to 1, and the marked
    operating point is the prefix threshold's own rates."""
    out, rep = report
    roc = rep["plots"]["roc"]
    n_benign = rep["confusion"]["fp"] + rep["confusion"]["tn"]
    assert roc["x_scale"] == "log" and roc["x_limits"] == pytest.approx([1 / n_benign, 1.0])
    m = rep["metrics"]
    assert roc["operating_point"] == pytest.approx([max(m["fpr"], 1 / n_benign), m["recall"]])
    assert any(t.startswith("operating point (threshold ") for t in roc["labels"])


def test_the_demo_says_where_its_output_is_and_what_the_numbers_mean(report, tmp_path):
    """`make demo`'s last words (tools/demo_summary.py), from the files it made, not from a script."""
    out, rep = report
    verdicts = tmp_path / "verdicts.jsonl"
    r = subprocess.run([sys.executable, "-m", "dpack", "score", str(SAMPLE), "--verdicts", str(verdicts)],
                       capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "demo_summary.py"), str(verdicts), str(out)],
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode == 0, r.stderr
    n = len(verdicts.read_text().splitlines())
    c = rep["confusion"]
    text = " ".join(r.stdout.split())
    assert f"({n:,} flows," in text and str(out / "index.html") in text
    assert f"{c['tp'] + c['fn']:,} of its {n:,} flows are attacks" in text and "flagged is expected" in text
    assert "dpack explain" in text
