"""Connection summaries in the shape of Zeek's ``conn.log``: what the flow-record detectors read.

``ConnRecord`` holds the fields Zeek sends live (``DPack::connection_summary``) and that the flow table
computes offline from a capture (``FlowTable(records=True)``). History letters follow Zeek: ``s h a d f
r`` for SYN, SYN-ACK, pure ACK, payload, FIN, RST; upper case from the originator, lower case from the
responder; each letter at most once per direction, in order of first appearance. ``conn_state`` is
derived from the history with Zeek's state names when a capture is read offline (Zeek computes its own).
"""

from __future__ import annotations

from dataclasses import dataclass

HISTORY_LETTERS = "SHADFRshadfr"  # the multi-hot history features, one per letter and direction


@dataclass(slots=True)
class ConnRecord:
    ts: float
    proto: str  # "tcp" | "udp" | "icmp" | ... (Zeek's transport_proto names)
    src: str
    sport: int
    dst: str
    dport: int
    duration: float
    orig_pkts: int
    resp_pkts: int
    orig_bytes: int  # transport payload bytes
    resp_bytes: int
    orig_ip_bytes: int
    resp_ip_bytes: int
    history: str
    conn_state: str
    service: str = ""  # Zeek's DPD result, kept for the log; the models use the port-derived service
    uid: str = ""
    community_id: str = ""


def tcp_history_letter(flags: int, payload_len: int) -> str:
    """The originator-side (upper-case) history letter for one TCP segment, or '' if none applies."""
    syn, fin, rst, ack = flags & 0x02, flags & 0x01, flags & 0x04, flags & 0x10
    if rst:
        return "R"
    if syn:
        return "H" if ack else "S"
    if fin:
        return "F"
    if payload_len > 0:
        return "D"
    return "A" if ack else ""


def conn_state(proto: str, history: str, resp_pkts: int) -> str:
    """Zeek's conn_state for a finished connection, derived from its history (TCP) or its packet counts."""
    if proto != "tcp":
        return "SF" if resp_pkts > 0 else "S0"
    syn, synack = "S" in history, "h" in history or "H" in history
    if not syn and not synack:
        return "OTH"
    if syn and not synack:
        if "r" in history:
            return "REJ"
        if "R" in history:
            return "RSTOS0"
        if "F" in history:
            return "SH"
        return "S0"
    if synack and not syn:
        if "r" in history:
            return "RSTRH"
        if "f" in history:
            return "SHR"
        return "OTH"
    if "R" in history:
        return "RSTO"
    if "r" in history:
        return "RSTR"
    fin_o, fin_r = "F" in history, "f" in history
    if fin_o and fin_r:
        return "SF"
    if fin_o:
        return "S2"
    if fin_r:
        return "S3"
    return "S1"
