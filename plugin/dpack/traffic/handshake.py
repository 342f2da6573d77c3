"""Whether a TCP flow's initiator demonstrably received the responder's packets (so its address is not
spoofed): the one handshake check, for the rules' ``require_handshake``. From the frames of a flow's
prefix (what Zeek exports and the flow table hands out alike), or, for a connection summary, from
Zeek's history letters."""

from __future__ import annotations

import struct
from collections.abc import Sequence

from .encode import Frame
from .packets import PROTO_TCP, TCP_ACK, TCP_SYN, ip_offset, parse_ip


def tcp_seq_ack(buf: bytes, off: int) -> tuple[int, int] | None:
    """(seq, ack) of the TCP segment in the IPv4/IPv6 packet at ``buf[off]`` (no IPv6 extension headers)."""
    v = buf[off] >> 4
    if v == 4:
        l4 = off + (buf[off] & 0x0F) * 4
    elif v == 6 and len(buf) > off + 6 and buf[off + 6] == PROTO_TCP:
        l4 = off + 40
    else:
        return None
    if l4 + 12 > len(buf):
        return None
    return struct.unpack_from("!II", buf, l4 + 4)


def from_frames(frames: Sequence[Frame]) -> bool:
    """Whether a TCP flow's initiator demonstrably received the responder's packets - i.e. its address is
    not spoofed. Evidence, from the raw (unmasked) frames of the prefix: an initiator packet with ACK whose
    acknowledgement number lies within 64 KiB at or after the sequence number of a responder packet, or a
    responder packet acknowledging the initiator's SYN together with a later initiator ACK carrying data.
    A blind spoofer would have to guess the responder's initial sequence number (about 1 in 65,536)."""
    syn_seq = None
    resp_seqs: list[int] = []
    resp_acked_syn = False
    orig_acks: list[tuple[int, bool]] = []  # (ack number, carries payload)
    for fr in frames:
        off = ip_offset(fr.data, fr.linktype)
        if off < 0:
            continue
        p = parse_ip(fr.data, off)
        if p is None or p.proto != PROTO_TCP or p.fragment:
            continue
        sa = tcp_seq_ack(fr.data, off)
        if sa is None:
            continue
        seq, ack = sa
        flags = p.tcp_flags
        if fr.is_orig:
            if flags & TCP_SYN and not flags & TCP_ACK:
                syn_seq = seq
            elif flags & TCP_ACK:
                orig_acks.append((ack, p.payload_len > 0))
        else:
            resp_seqs.append(seq)
            if syn_seq is not None and flags & TCP_ACK and ack == (syn_seq + 1) & 0xFFFFFFFF:
                resp_acked_syn = True
    for a, _ in orig_acks:
        if any((a - s) & 0xFFFFFFFF <= 65536 for s in resp_seqs):
            return True
    return resp_acked_syn and any(data for _, data in orig_acks)


def from_history(history: str) -> bool:
    """The same fact for a connection summary: the originator sent a SYN, the responder a SYN-ACK, and the
    originator then an ACK or data (Zeek's history letters; the summary has no sequence numbers)."""
    return "S" in history and "h" in history and ("A" in history or "D" in history)
