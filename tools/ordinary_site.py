"""A benign site unlike lab-dev, made only of ordinary behaviour that first-packet models mistake for attacks.

    python tools/ordinary_site.py OUT.pcap [--minutes 20] [--seed 3]

Writes ``OUT.pcap`` and ``OUT.labels.csv`` (lab-dev's format; every flow benign, its family naming the
behaviour). Deterministic for a seed. Hosts 172.20.0.0/24 with a Windows-like stack (TTL 128, other TCP
options than the lab's Linux hosts), a resolver and servers in 172.20.1.0/24, and an unreachable host:

- ``dns_parallel``: A and AAAA queries sent together on one socket, as glibc's resolver does (one flow of
  four packets, the second query before the first answer);
- ``dns_unanswered``: a query that gets no answer (one packet);
- ``syn_retry``: SYN to an unreachable host, retried after 1 s and 3 s (one flow, three SYNs, no answer);
- ``icmp_unreachable``: a UDP datagram to a closed port answered by ICMP port unreachable;
- ``ftp_data``: passive-mode FTP data connections carrying files of different types (text, gzip, PNG);
- ``http`` and ``tls``: ordinary web requests.

Used by tests/test_site.py (a model learned on part of this site must not flag the rest) and by the
foreign-site check in docs/results.md.
"""

from __future__ import annotations

import argparse
import csv
import io
import random
import socket
import sys
import zlib
from pathlib import Path

import dpkt

S, A, P, F, R = dpkt.tcp.TH_SYN, dpkt.tcp.TH_ACK, dpkt.tcp.TH_PUSH, dpkt.tcp.TH_FIN, dpkt.tcp.TH_RST
RESOLVER, WEB, FTP, DEAD = "172.20.1.53", "172.20.1.80", "172.20.1.21", "172.20.9.9"
# the behaviours, with their share of the site's flows (weights)
FAMILIES = {
    "dns_parallel": 30,
    "dns_unanswered": 4,
    "syn_retry": 2,
    "icmp_unreachable": 2,
    "ftp_data": 6,
    "http": 30,
    "tls": 26,
}
MAC_A, MAC_B = b"\x02\x00\x00\x00\x00\x0a", b"\x02\x00\x00\x00\x00\x0b"
WIN_OPTS = b"\x02\x04\x05\xb4\x01\x03\x03\x08\x01\x01\x04\x02"  # MSS, NOP, wscale 8, NOP NOP SACK-permitted


def _ip(src: str, dst: str, l4: dpkt.Packet, proto: int, ttl: int, ident: int) -> bytes:
    ip = dpkt.ip.IP(src=socket.inet_aton(src), dst=socket.inet_aton(dst), p=proto, ttl=ttl, id=ident, data=l4)
    ip.len = 20 + len(bytes(l4))
    return bytes(ip)


def _eth(ip: bytes, to_server: bool) -> bytes:
    src, dst = (MAC_A, MAC_B) if to_server else (MAC_B, MAC_A)
    return dst + src + b"\x08\x00" + ip


class Site:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.frames: list[tuple[float, bytes]] = []
        self.labels: list[dict[str, object]] = []
        self.ident = 1

    def _pkt(self, t: float, src: str, dst: str, l4: dpkt.Packet, proto: int, client: bool) -> None:
        self.ident = (self.ident + 1) & 0xFFFF
        ttl = 128 if client else 64
        self.frames.append((t, _eth(_ip(src, dst, l4, proto, ttl, self.ident), client)))

    def _label(
        self, t: float, proto: str, src: str, sport: int, dst: str, dport: int, n: int, fam: str
    ) -> None:
        self.labels.append({"ts_first": f"{t:.6f}", "proto": proto, "src": src, "sport": sport, "dst": dst,
                            "dport": dport, "n_packets": n, "label": "benign", "family": fam})  # fmt: skip

    def _tcp(
        self, sport: int, dport: int, flags: int, seq: int, ack: int, data: bytes = b"", opts: bytes = b""
    ) -> dpkt.tcp.TCP:
        t = dpkt.tcp.TCP(
            sport=sport, dport=dport, flags=flags, seq=seq, ack=ack, win=64240 if opts else 1026, opts=opts
        )
        t.off = (20 + len(opts)) // 4
        t.data = data
        return t

    def _udp(self, sport: int, dport: int, data: bytes) -> dpkt.udp.UDP:
        u = dpkt.udp.UDP(sport=sport, dport=dport, data=data)
        u.ulen = 8 + len(data)
        return u

    def _dns(self, qid: int, name: str, qtype: int, answer: bool) -> bytes:
        d = dpkt.dns.DNS(id=qid, qr=int(answer), rd=1, ra=int(answer))
        d.qd = [dpkt.dns.DNS.Q(name=name, type=qtype, cls=1)]
        if answer:
            rr = dpkt.dns.DNS.RR(name=name, type=qtype, cls=1, ttl=300)
            rr.rdata = (
                socket.inet_aton("172.20.1.80")
                if qtype == 1
                else socket.inet_pton(socket.AF_INET6, "fd00::80")
            )
            rr.rlen = len(rr.rdata)
            d.an = [rr]
        return bytes(d)

    def tcp_exchange(
        self, t: float, c: str, sport: int, s: str, dport: int, req: bytes, resp: bytes, fam: str
    ) -> None:
        rtt = self.rng.uniform(0.002, 0.03)
        cs, ss = self.rng.randrange(1 << 31), self.rng.randrange(1 << 31)
        pk = [
            (0.0, c, s, self._tcp(sport, dport, S, cs, 0, opts=WIN_OPTS), True),
            (
                rtt,
                s,
                c,
                self._tcp(dport, sport, S | A, ss, cs + 1, opts=b"\x02\x04\x05\xb4\x01\x03\x03\x07"),
                False,
            ),
            (rtt * 1.5, c, s, self._tcp(sport, dport, A, cs + 1, ss + 1), True),
            (rtt * 1.6, c, s, self._tcp(sport, dport, A | P, cs + 1, ss + 1, req), True),
            (rtt * 2.7, s, c, self._tcp(dport, sport, A | P, ss + 1, cs + 1 + len(req), resp), False),
            (rtt * 3.0, c, s, self._tcp(sport, dport, A | F, cs + 1 + len(req), ss + 1 + len(resp)), True),
            (rtt * 4.0, s, c, self._tcp(dport, sport, A | F, ss + 1 + len(resp), cs + 2 + len(req)), False),
        ]
        for dt, a, b, seg, client in pk:
            self._pkt(t + dt, a, b, seg, 6, client)
        self._label(t, "tcp", c, sport, s, dport, len(pk), fam)

    def build(self, minutes: float, mix: dict[str, float] | None = None) -> None:
        """``mix``: weights of some behaviours instead of ``FAMILIES``' (the site's mix changed)."""
        rng = self.rng
        weights = {**FAMILIES, **(mix or {})}
        hosts = [f"172.20.0.{i}" for i in range(10, 40)]
        end = 60.0 * minutes
        t0 = 1_800_000_000.0
        t = 0.0
        port = 50000
        names = ["intranet.example", "mail.example", "files.example", "updates.example", "wiki.example"]
        while t < end:
            t += rng.expovariate(6.0)  # about 6 flows a second over the site
            h = rng.choice(hosts)
            port = 49152 + (port - 49151) % 16000
            at = t0 + t
            kind = rng.choices(list(weights), weights=list(weights.values()))[0]
            if kind == "dns_parallel":
                qa, qb = rng.randrange(65536), rng.randrange(65536)
                name = rng.choice(names)
                rtt = rng.uniform(0.001, 0.02)
                self._pkt(at, h, RESOLVER, self._udp(port, 53, self._dns(qa, name, 1, False)), 17, True)
                self._pkt(
                    at + 0.00005, h, RESOLVER, self._udp(port, 53, self._dns(qb, name, 28, False)), 17, True
                )
                self._pkt(at + rtt, RESOLVER, h, self._udp(53, port, self._dns(qa, name, 1, True)), 17, False)
                self._pkt(
                    at + rtt + 0.0001,
                    RESOLVER,
                    h,
                    self._udp(53, port, self._dns(qb, name, 28, True)),
                    17,
                    False,
                )
                self._label(at, "udp", h, port, RESOLVER, 53, 4, kind)
            elif kind == "dns_unanswered":
                self._pkt(
                    at,
                    h,
                    RESOLVER,
                    self._udp(port, 53, self._dns(rng.randrange(65536), rng.choice(names), 1, False)),
                    17,
                    True,
                )
                self._label(at, "udp", h, port, RESOLVER, 53, 1, kind)
            elif kind == "syn_retry":
                cs = rng.randrange(1 << 31)
                for k, dt in enumerate((0.0, 1.0, 3.0)):
                    self._pkt(at + dt, h, DEAD, self._tcp(port, 445, S, cs, 0, opts=WIN_OPTS), 6, True)
                    del k
                self._label(at, "tcp", h, port, DEAD, 445, 3, kind)
            elif kind == "icmp_unreachable":
                probe = self._udp(port, 5353 + rng.randrange(3), b"\x00" * rng.randrange(8, 40))
                self._pkt(at, h, WEB, probe, 17, True)
                inner = _ip(h, WEB, probe, 17, 128, self.ident)[:28]
                icmp = dpkt.icmp.ICMP(type=3, code=3, data=dpkt.icmp.ICMP.Unreach(data=inner))
                self._pkt(at + 0.0004, WEB, h, icmp, 1, False)
                self._label(at, "udp", h, port, WEB, probe.dport, 2, kind)
            elif kind == "ftp_data":
                body = rng.choice([
                    b"report line\r\n" * 40,
                    zlib.compress(bytes(rng.randrange(256) for _ in range(600))),
                    b"\x89PNG\r\n\x1a\n" + bytes(rng.randrange(256) for _ in range(500)),
                ])  # fmt: skip
                self.tcp_exchange(at, h, port, FTP, 40000 + rng.randrange(1000), b"", body, kind)
            elif kind == "http":
                path = rng.choice(["/", "/index.html", "/api/v1/items", "/static/app.js", "/favicon.ico"])
                req = f"GET {path} HTTP/1.1\r\nHost: intranet.example\r\nUser-Agent: Mozilla/5.0\r\n\r\n".encode()
                resp = (
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 120\r\n\r\n" + b"x" * 120
                )
                self.tcp_exchange(at, h, port, WEB, 80, req, resp, kind)
            else:
                hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(
                    rng.randrange(256) for _ in range(60)
                )
                shello = b"\x16\x03\x03\x00\x7a\x02\x00\x00\x76\x03\x03" + bytes(
                    rng.randrange(256) for _ in range(80)
                )
                self.tcp_exchange(at, h, port, WEB, 443, hello, shello, kind)
        self.frames.sort(key=lambda x: x[0])


def write(out: Path, minutes: float, seed: int, mix: dict[str, float] | None = None) -> Path:
    unknown = set(mix or {}) - set(FAMILIES)
    if unknown:
        raise ValueError(f"unknown behaviour(s) {sorted(unknown)}; known: {sorted(FAMILIES)}")
    site = Site(seed)
    site.build(minutes, mix)
    buf = io.BytesIO()
    w = dpkt.pcap.Writer(buf, snaplen=65535, linktype=1)
    for ts, fr in site.frames:
        w.writepkt(fr, ts=ts)
    out.write_bytes(buf.getvalue())
    stem = out.name.split(".")[0]
    with open(out.with_name(stem + ".labels.csv"), "w", newline="") as fh:
        cols = ["ts_first", "proto", "src", "sport", "dst", "dport", "n_packets", "label", "family"]
        wr = csv.DictWriter(fh, cols)
        wr.writeheader()
        wr.writerows(site.labels)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--minutes", type=float, default=20.0)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument(
        "--mix", action="append", default=[], metavar="BEHAVIOUR=WEIGHT",
        help="another weight for a behaviour (repeatable), e.g. dns_unanswered=40: a site whose mix changed",
    )  # fmt: skip
    a = ap.parse_args(argv)
    mix = {}
    for m in a.mix:
        name, _, w = m.partition("=")
        mix[name] = float(w)
    write(a.out, a.minutes, a.seed, mix)
    print(f"wrote {a.out} and its labels")
    return 0


if __name__ == "__main__":
    sys.exit(main())
