"""Small packet and capture builders for the tests (real dpkt objects, real pcap/pcapng writers)."""

from __future__ import annotations

import gzip
import io
import socket
import struct
from collections.abc import Iterable
from pathlib import Path

import dpkt

CLIENT = "192.0.2.10"
SERVER = "198.51.100.20"
CLIENT6 = "2001:db8::10"
SERVER6 = "2001:db8::20"
MAC_A = b"\x02\x00\x00\x00\x00\x01"
MAC_B = b"\x02\x00\x00\x00\x00\x02"


def a4(s: str) -> bytes:
    return socket.inet_pton(socket.AF_INET, s)


def a6(s: str) -> bytes:
    return socket.inet_pton(socket.AF_INET6, s)


def tcp(
    sport: int, dport: int, flags: int, payload: bytes = b"", seq: int = 1000, ack: int = 0, opts: bytes = b""
) -> dpkt.tcp.TCP:
    t = dpkt.tcp.TCP(sport=sport, dport=dport, flags=flags, seq=seq, ack=ack, win=64240, opts=opts)
    t.off = (20 + len(opts)) // 4
    t.data = payload
    return t


def udp(sport: int, dport: int, payload: bytes = b"") -> dpkt.udp.UDP:
    u = dpkt.udp.UDP(sport=sport, dport=dport, data=payload)
    u.ulen = 8 + len(payload)
    return u


def ip4(
    src: str, dst: str, l4: dpkt.Packet, proto: int | None = None, ident: int = 1, ttl: int = 64
) -> bytes:
    p = proto if proto is not None else {dpkt.tcp.TCP: 6, dpkt.udp.UDP: 17, dpkt.icmp.ICMP: 1}[type(l4)]
    ip = dpkt.ip.IP(src=a4(src), dst=a4(dst), p=p, id=ident, ttl=ttl, data=l4)
    ip.len = 20 + len(bytes(l4))
    return bytes(ip)


def ip4_raw(src: str, dst: str, proto: int, data: bytes, off8: int = 0, more: bool = False) -> bytes:
    """An IPv4 packet around already-encoded bytes, possibly a fragment (offset ``off8`` in 8-byte units,
    ``more`` fragments follow); checksum left 0 (dpack masks it; Zeek runs with -C in the tests)."""
    flags = (0x2000 if more else 0) | off8
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(data), 7, flags, 64, proto, 0, a4(src), a4(dst))
    return hdr + data


def ip6(src: str, dst: str, l4: dpkt.Packet, nxt: int, ext: bytes = b"") -> bytes:
    """An IPv6 packet; ``ext`` is a chain of already-encoded extension headers (nxt is the first one's type)."""
    body = ext + bytes(l4)
    hdr = struct.pack("!IHBB", 0x60012345, len(body), nxt, 64) + a6(src) + a6(dst)
    return hdr + body


def eth(ip_bytes: bytes, vlans: Iterable[int] = (), src: bytes = MAC_A, dst: bytes = MAC_B) -> bytes:
    etype = 0x86DD if ip_bytes[0] >> 4 == 6 else 0x0800
    tags = list(vlans)
    out = dst + src
    for i, vid in enumerate(tags):
        out += struct.pack("!HH", 0x88A8 if i == 0 and len(tags) > 1 else 0x8100, vid)
    return out + struct.pack("!H", etype) + ip_bytes


def sll(ip_bytes: bytes) -> bytes:
    etype = 0x86DD if ip_bytes[0] >> 4 == 6 else 0x0800
    return struct.pack("!HHH8sH", 0, 1, 6, MAC_A + b"\0\0", etype) + ip_bytes


def handshake(
    client: str = CLIENT,
    server: str = SERVER,
    sport: int = 40000,
    dport: int = 22,
    request: bytes = b"SSH-2.0-OpenSSH_9.2\r\n",
) -> list[bytes]:
    """IP packets of a TCP connection opening: SYN, SYN-ACK, ACK, client data, server ACK."""
    S, A, P = dpkt.tcp.TH_SYN, dpkt.tcp.TH_ACK, dpkt.tcp.TH_PUSH
    ts_opt = b"\x01\x01\x08\x0a" + struct.pack("!II", 123456, 0)
    return [
        ip4(client, server, tcp(sport, dport, S, seq=111, opts=b"\x02\x04\x05\xb4" + ts_opt)),
        ip4(server, client, tcp(dport, sport, S | A, seq=999, ack=112, opts=b"\x02\x04\x05\xb4" + ts_opt)),
        ip4(client, server, tcp(sport, dport, A, seq=112, ack=1000)),
        ip4(client, server, tcp(sport, dport, A | P, request, seq=112, ack=1000)),
        ip4(server, client, tcp(dport, sport, A, seq=1000, ack=112 + len(request))),
    ]


def write_pcap(
    path: Path,
    frames: Iterable[bytes | tuple[float, bytes]],
    linktype: int = 1,
    snaplen: int = 65535,
    gz: bool = False,
    nano: bool = False,
) -> Path:
    buf = io.BytesIO()
    w = dpkt.pcap.Writer(buf, snaplen=snaplen, linktype=linktype, nano=nano)
    for i, fr in enumerate(frames):
        ts, data = fr if isinstance(fr, tuple) else (1_700_000_000.0 + i * 0.001, fr)
        w.writepkt(data, ts=ts)
    raw = buf.getvalue()
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


def _pcapng_block(btype: int, body: bytes) -> bytes:
    body += b"\0" * (-len(body) % 4)
    size = 12 + len(body)
    return struct.pack("<II", btype, size) + body + struct.pack("<I", size)


def write_pcapng_interfaces(
    path: Path, interfaces: list[tuple[int, int]], packets: Iterable[tuple[int, float, bytes]]
) -> Path:
    """A pcapng file written block by block: ``interfaces`` as (link type, if_tsresol: 10^-v seconds),
    then Enhanced Packet Blocks ``(interface, ts, frame)`` (dpkt's writer knows one interface only)."""
    out = [_pcapng_block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))]
    for linktype, resol in interfaces:
        opts = struct.pack("<HHB3x", 9, 1, resol) + struct.pack("<HH", 0, 0)
        out.append(_pcapng_block(1, struct.pack("<HHI", linktype, 0, 65535) + opts))
    for iface, ts, frame in packets:
        units = round(ts * 10 ** interfaces[iface][1])
        hdr = struct.pack("<IIIII", iface, units >> 32, units & 0xFFFFFFFF, len(frame), len(frame))
        out.append(_pcapng_block(6, hdr + frame))
    path.write_bytes(b"".join(out))
    return path


def write_pcapng(path: Path, frames: Iterable[bytes], linktype: int = 1) -> Path:
    buf = io.BytesIO()
    w = dpkt.pcapng.Writer(buf, linktype=linktype)
    for i, fr in enumerate(frames):
        w.writepkt(fr, ts=1_700_000_000.0 + i * 0.001)
    path.write_bytes(buf.getvalue())
    return path
