"""The Zeek package: every script parses (zeekscript, the parser Zeek's own formatter uses), is formatted
as zeek-format writes it, and follows the package conventions the README promises."""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

SCRIPTS = sorted((ROOT / "zeek_scripts").glob("*.zeek")) + sorted(
    (ROOT / "tests" / "btest" / "dpack").glob("*.zeek")
)


def tool(name):
    return shutil.which(name) or str(Path(sys.executable).with_name(name))


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.name)
def test_script_parses(path):
    r = subprocess.run([tool("zeek-script"), "parse", str(path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "ERROR" not in r.stdout


def test_parser_rejects_a_broken_script(tmp_path):
    bad = tmp_path / "bad.zeek"
    bad.write_text("event zeek_init() {\n  local x = ;\n")
    r = subprocess.run([tool("zeek-script"), "parse", str(bad)], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.name)
def test_script_is_formatted(path):
    r = subprocess.run([tool("zeek-format"), str(path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout == path.read_text(), f"run: zeek-format -i {path}"


def test_package_conventions():
    meta = configparser.ConfigParser()
    meta.read(ROOT / "zkg.meta")
    pkg = meta["package"]
    assert pkg["script_dir"] == "zeek_scripts" and "btest" in pkg["test_command"]
    assert "zeek >=6.0.0" in pkg["depends"] and "dpack" in pkg["external_depends"]
    main = (ROOT / "zeek_scripts" / "main.zeek").read_text()
    assert (ROOT / "zeek_scripts" / "__load__.zeek").read_text().count("@load") == 2
    assert re.search(r"^module DPack;", main, re.M)
    # every exported option and const is documented
    export = main[main.index("export {") : main.index("\n}\n")]
    for m in re.finditer(r"^\t(option|const) (\w+)", export, re.M):
        before = export[: m.start()].rstrip().splitlines()[-1]
        assert before.strip().startswith("##"), f"{m.group(2)} lacks a ## comment"
    # operators' runtime knobs are options; start-up settings are &redef consts
    for name in (
        "enabled",
        "packets",
        "capture_bytes",
        "batch_size",
        "batch_interval",
        "max_wait",
        "ignore_subnets",
    ):
        assert re.search(rf"^\toption {name}\b", export, re.M), name
    for name in ("sample_topic", "listen_address", "listen_port"):
        assert re.search(rf"^\tconst {name} = .* &redef;", export, re.M), name
    # flow keys travel as separate fields, never as a conn_id record; bytes as base64
    contract = (ROOT / "zeek_scripts" / "contract.zeek").read_text()
    assert "conn_id" not in contract and "encode_base64" in main
    # no site policy changes: nothing redefs another module's settings - but for the packet thresholds
    # that hand dpack a connection's first packets, added to (never replacing) Zeek's set
    assert re.findall(r"^redef (?!record connection|enum|DPack::)(\S+)", main + contract, re.M) == [
        "ConnThreshold::generic_packet_thresholds"
    ]
    assert "redef ConnThreshold::generic_packet_thresholds += {" in main
