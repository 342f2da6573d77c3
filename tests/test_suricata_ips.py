"""Suricata 7 as an inline IPS (AF_PACKET copy-mode between two veths) in network namespaces this test
creates: a client, a server and Suricata in the middle. dpack's dataset mode blocks the client's packets
from the next packet on, without a rules reload, and expiry lets them through again.

Traffic: a few UDP datagrams to an echo server in the server namespace (bounded: 3 tries, 0.5 s each).
Needs root, iproute2, ethtool and suricata; skipped elsewhere unless CI is set.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time

import pytest

from dpack.sinks.rules import Policy, RuleBook
from dpack.sinks.suricata import SuricataError, SuricataSocket
from dpack.verdict import Verdict

TOOLS = all(shutil.which(t) for t in ("ip", "ethtool", "suricata")) and os.geteuid() == 0
pytestmark = pytest.mark.skipif(
    not TOOLS and not os.environ.get("CI"), reason="needs root, iproute2, ethtool, suricata"
)

CLIENT, SERVER, PORT = "10.99.0.1", "10.99.0.2", 9999
ECHO = textwrap.dedent("""
    import socket, sys, time
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    if sys.argv[1] == "server":
        s.bind((sys.argv[2], int(sys.argv[3]))); s.settimeout(1.0)
        end = time.time() + 120
        while time.time() < end:
            try:
                d, a = s.recvfrom(2048); s.sendto(d, a)
            except socket.timeout:
                pass
    else:
        s.settimeout(0.5); ok = 0
        for i in range(3):
            s.sendto(b"dpack %d" % i, (sys.argv[2], int(sys.argv[3])))
            try:
                s.recvfrom(2048); ok += 1
            except socket.timeout:
                pass
        print(ok)
""")


def sh(*args):
    subprocess.run(args, check=True, capture_output=True, timeout=30)


@pytest.fixture
def netlab(tmp_path):
    tag = f"dp{os.getpid() % 10000}"
    ns = {k: f"{tag}{k}" for k in ("c", "s", "i")}
    procs = []
    try:
        for n in ns.values():
            sh("ip", "netns", "add", n)
        sh(
            "ip",
            "link",
            "add",
            "vc0",
            "netns",
            ns["c"],
            "type",
            "veth",
            "peer",
            "name",
            "vc1",
            "netns",
            ns["i"],
        )
        sh(
            "ip",
            "link",
            "add",
            "vs0",
            "netns",
            ns["s"],
            "type",
            "veth",
            "peer",
            "name",
            "vs1",
            "netns",
            ns["i"],
        )
        sh("ip", "-n", ns["c"], "addr", "add", f"{CLIENT}/24", "dev", "vc0")
        sh("ip", "-n", ns["s"], "addr", "add", f"{SERVER}/24", "dev", "vs0")
        for n, dev in ((ns["c"], "vc0"), (ns["s"], "vs0"), (ns["i"], "vc1"), (ns["i"], "vs1")):
            sh("ip", "-n", n, "link", "set", dev, "up")
            # checksums are filled in by the NIC otherwise, and a frame copied by AF_PACKET has none
            sh("ip", "netns", "exec", n, "ethtool", "-K", dev, "tx", "off", "rx", "off")
        echo = tmp_path / "echo.py"
        echo.write_text(ECHO)
        procs.append(
            subprocess.Popen(
                ["ip", "netns", "exec", ns["s"], sys.executable, str(echo), "server", SERVER, str(PORT)]
            )
        )
        yield ns, echo, procs
    finally:
        for p in procs:
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        for n in ns.values():
            subprocess.run(["ip", "netns", "del", n], capture_output=True, timeout=30)


def replies(ns, echo):
    r = subprocess.run(
        ["ip", "netns", "exec", ns["c"], sys.executable, str(echo), "client", SERVER, str(PORT)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return int(r.stdout.strip())


def test_dataset_blocks_the_next_packets_without_a_reload(tmp_path, netlab):
    ns, echo, procs = netlab
    rules = tmp_path / "rules" / "dpack.rules"
    rules.parent.mkdir()
    (tmp_path / "dpack-block.lst").touch()
    sock_path = tmp_path / "suricata.sock"
    yaml = tmp_path / "suricata.yaml"
    iface = "    cluster-type: cluster_flow\n    defrag: no\n"
    yaml.write_text(
        f"%YAML 1.1\n---\ninclude: /etc/suricata/suricata.yaml\ndefault-rule-path: {rules.parent}\n"
        f"rule-files:\n  - dpack.rules\n"
        f"datasets:\n  dpack-block:\n    type: ip\n    state: {tmp_path / 'dpack-block.lst'}\n"
        f"unix-command:\n  enabled: yes\n  filename: {sock_path}\n"
        f"af-packet:\n  - interface: vc1\n    copy-mode: ips\n    copy-iface: vs1\n    cluster-id: 98\n{iface}"
        f"  - interface: vs1\n    copy-mode: ips\n    copy-iface: vc1\n    cluster-id: 97\n{iface}"
    )
    book = RuleBook(
        Policy(mode="drop", apply="dataset", threshold_flows=1, ttl=600), rules, suricata_config=str(yaml)
    )
    book.write()
    suri = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            ns["i"],
            shutil.which("suricata"),
            "-c",
            str(yaml),
            "--af-packet",
            "-k",
            "none",
            "-l",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    procs.append(suri)
    sock = SuricataSocket(str(sock_path), timeout=20)
    end = time.monotonic() + 60
    while True:
        try:
            sock.command("version")
            break
        except SuricataError:
            assert time.monotonic() < end and suri.poll() is None, "suricata did not start"
            time.sleep(0.3)
    end = time.monotonic() + 30  # the capture threads come up after the socket
    while replies(ns, echo) != 3:
        assert time.monotonic() < end, "no traffic through Suricata"
    reloaded = sock.command("ruleset-reload-time")

    flagged = Verdict(time.time(), "udp", CLIENT, 40000, SERVER, PORT, "", 0.5, 0.1, True, "m@0123456789ab")
    book.observe([flagged])
    book.write()
    assert "1 addresses" in book.apply(sock)
    assert replies(ns, echo) == 0  # blocked from the next packet on
    book.expire(time.time() + 3600)
    book.write()
    assert "0 addresses" in book.apply(sock)
    assert replies(ns, echo) == 3
    assert sock.command("ruleset-reload-time") == reloaded  # no reload at any point
