"""A running Suricata 7 (unix-socket mode, fed pcaps through its socket) under dpack's control: a rules
reload takes effect, dataset-add takes effect without a reload, expiry removes the entry, a broken rule
leaves the previous rules in force, and a missing or dead socket is reported while the file stays written."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import socket
import subprocess
import time

import pytest
from conftest import SAMPLE

from dpack.errors import RulesError
from dpack.offline.score import score_capture
from dpack.prefix.modelfile import load_model
from dpack.prefix.scorer import Scorer
from dpack.sinks.rules import Policy, RuleBook
from dpack.sinks.suricata import SuricataError, SuricataSocket

SURICATA = shutil.which("suricata")
SYSTEM_YAML = "/etc/suricata/suricata.yaml"
pytestmark = pytest.mark.skipif(
    (SURICATA is None or not os.path.exists(SYSTEM_YAML)) and not os.environ.get("CI"),
    reason="suricata not installed (make test installs it)",
)
ATTACKERS = {"10.201.66.11", "10.201.66.12", "10.201.66.21", "10.201.66.31", "10.201.66.41"}


@pytest.fixture(scope="module")
def verdicts():
    vs = []
    score_capture(
        SAMPLE, Scorer(load_model(SAMPLE.parents[1] / "models" / "dpack-default.pt")), on_verdicts=vs.extend
    )
    return vs


@pytest.fixture(scope="module")
def pcap(tmp_path_factory):
    p = tmp_path_factory.mktemp("pcap") / "sample.pcap"
    p.write_bytes(gzip.decompress(SAMPLE.read_bytes()))
    return p


class LiveSuricata:
    def __init__(self, d, rules):
        self.dir = d
        self.sock_path = str(d / "suricata.sock")
        (d / "log").mkdir()
        (d / "dpack-block.lst").touch()
        (d / "suricata.yaml").write_text(
            f"%YAML 1.1\n---\ninclude: {SYSTEM_YAML}\ndefault-rule-path: {rules.parent}\n"
            f"rule-files:\n  - {rules.name}\n"
            f"datasets:\n  dpack-block:\n    type: ip\n    state: {d / 'dpack-block.lst'}\n"
        )
        self.yaml = str(d / "suricata.yaml")

    def start(self):
        d = self.dir
        self.proc = subprocess.Popen(
            [
                SURICATA,
                "-c",
                str(d / "suricata.yaml"),
                f"--unix-socket={self.sock_path}",
                "--simulate-ips",
                "-l",
                str(d / "log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.sock = SuricataSocket(self.sock_path, timeout=20)
        end = time.monotonic() + 60
        while True:
            try:
                self.sock.command("version")
                break
            except SuricataError:
                if time.monotonic() > end or self.proc.poll() is not None:
                    raise AssertionError(
                        "suricata did not come up: "
                        + (self.proc.stderr.read() if self.proc.poll() is not None else "")
                    ) from None
                time.sleep(0.2)
        self.runs = 0
        return self

    def replay(self, pcap):
        """Run the pcap through Suricata; returns its dpack alerts as (sid, src_ip, action)."""
        self.runs += 1
        out = self.dir / f"run{self.runs}"
        out.mkdir()
        self.sock.command("pcap-file", {"filename": str(pcap), "output-dir": str(out)})
        # done when the file has been current and is not any more (or was never seen: it took < one poll)
        seen, t0, end = False, time.monotonic(), time.monotonic() + 120
        while True:
            current = self.sock.command("pcap-current")
            if current not in (None, "None"):
                seen = True
            elif self.sock.command("pcap-file-number") == 0 and (seen or time.monotonic() - t0 > 1.5):
                break
            assert time.monotonic() < end, "pcap not processed in time"
            time.sleep(0.05)
        eve = out / "eve.json"
        alerts = [json.loads(ln) for ln in open(eve)] if eve.exists() else []
        return [
            (a["alert"]["signature_id"], a["src_ip"], a["alert"]["action"])
            for a in alerts
            if a.get("event_type") == "alert" and 1_900_000 <= a["alert"]["signature_id"] <= 1_909_999
        ]

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture
def live(tmp_path):
    made = []

    def start(book):
        s = LiveSuricata(tmp_path, book.path)
        book.suricata_config = (
            s.yaml
        )  # suricata -T with the same configuration (the dataset is defined there)
        book.write()
        made.append(s.start())
        return s

    yield start
    for s in made:
        s.stop()


def test_rules_reload_takes_effect_and_a_broken_rule_keeps_the_old_rules(
    tmp_path, live, pcap, verdicts, monkeypatch
):
    book = RuleBook(Policy(mode="drop"), tmp_path / "rules" / "dpack.rules")
    s = live(book)
    assert s.replay(pcap) == []
    book.observe(verdicts)
    book.write()
    msg = book.apply(s.sock)
    assert "5 rules loaded, 0 failed" in msg
    alerts = s.replay(pcap)
    assert {a[1] for a in alerts} == ATTACKERS and {a[2] for a in alerts} == {"blocked"}
    # a broken rule never reaches Suricata: suricata -T refuses the file, the old one stays in force
    before = book.path.read_text()
    good_text = book.text
    monkeypatch.setattr(
        book, "text", lambda: good_text() + 'drop ip any any -> any any (msg:"x"; bogus; sid:1900500;)\n'
    )
    with pytest.raises(RulesError, match="suricata -T refused"):
        book.write()
    assert book.path.read_text() == before
    assert {a[1] for a in s.replay(pcap)} == ATTACKERS


def lookup(sock, addr):
    (reply,) = sock.commands(
        [("dataset-lookup", {"setname": "dpack-block", "settype": "ip", "datavalue": addr})]
    )
    return reply.get("return") == "OK"


def test_dataset_add_takes_effect_without_reload_and_expiry_removes_it(tmp_path, live, pcap, verdicts):
    """In Suricata's unix-socket (pcap) runmode each pcap gets a fresh detection engine that loads datasets
    from their state file, so the packet-level effect of dataset-add is not observable here (that needs a
    live-capture Suricata); this test checks what the running engine holds, and that no reload happened."""
    book = RuleBook(Policy(mode="drop", apply="dataset", ttl=600), tmp_path / "rules" / "dpack.rules")
    s = live(book)
    assert s.replay(pcap) == []
    assert "dataset:isset,dpack-block" in book.path.read_text()
    reloaded = s.sock.command("ruleset-reload-time")
    book.observe(verdicts, now=time.time())
    book.write()
    assert "5 addresses" in book.apply(s.sock)
    assert all(lookup(s.sock, a) for a in ATTACKERS) and not lookup(s.sock, "10.201.1.15")
    assert s.sock.command("ruleset-reload-time") == reloaded  # no reload happened
    # restart of dpack: the state knows what Suricata holds; expiry removes it from the dataset
    book2 = RuleBook(Policy(mode="drop", apply="dataset", ttl=600), book.path, suricata_config=s.yaml)
    assert set(book2.state.applied) == ATTACKERS
    book2.expire(now=time.time() + 3600)
    book2.write()
    assert "0 addresses" in book2.apply(s.sock)
    assert not any(lookup(s.sock, a) for a in ATTACKERS)


def test_socket_missing_or_dead_is_reported_and_the_file_stays(tmp_path, verdicts):
    book = RuleBook(Policy(mode="drop"), tmp_path / "dpack.rules")
    book.observe(verdicts)
    book.write()
    with pytest.raises(SuricataError, match="no Suricata socket"):
        book.apply(SuricataSocket(str(tmp_path / "nope.sock"), timeout=2))
    dead = tmp_path / "dead.sock"
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(str(dead))
    srv.close()  # the file stays, nobody listens: what a crashed Suricata leaves behind
    with pytest.raises(SuricataError, match="dead"):
        book.apply(SuricataSocket(str(dead), timeout=2))
    assert book.path.read_text().count("dpack anomalous source") == 5
