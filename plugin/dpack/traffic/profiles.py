"""Profile classes: what the CNN learns to tell apart, derived from the flow itself, with no manual labels.

D-PACK's CNN profiles benign traffic by classifying it. The paper used application labels; dpack uses the
service a flow talks to (transport protocol + the responder's port, grouped into well-known services),
which every flow carries and nobody has to label. 25 classes, as the paper's dense 25 softmax.
"""

from __future__ import annotations

from .packets import PROTO_ICMP, PROTO_ICMP6, PROTO_TCP, PROTO_UDP

# (name, protocol or None for TCP and UDP, ports)
_SERVICES: list[tuple[str, int | None, frozenset[int]]] = [
    ("dns", None, frozenset({53, 853, 5353, 5355})),
    ("http", PROTO_TCP, frozenset({80, 8000, 8008, 8080, 8081, 8888})),
    ("https", PROTO_TCP, frozenset({443, 8443, 9443})),
    ("quic", PROTO_UDP, frozenset({443})),
    ("ssh", PROTO_TCP, frozenset({22, 2222})),
    ("ftp", PROTO_TCP, frozenset({20, 21, 989, 990})),
    ("telnet", PROTO_TCP, frozenset({23, 992})),
    ("smtp", PROTO_TCP, frozenset({25, 465, 587, 2525})),
    ("mail", PROTO_TCP, frozenset({110, 143, 993, 995})),
    ("mqtt", PROTO_TCP, frozenset({1883, 8883})),
    ("ntp", PROTO_UDP, frozenset({123})),
    ("dhcp", PROTO_UDP, frozenset({67, 68, 546, 547})),
    ("snmp_syslog", PROTO_UDP, frozenset({161, 162, 514})),
    ("smb_rpc", None, frozenset({135, 137, 138, 139, 445})),
    ("directory", None, frozenset({88, 389, 464, 636, 3268, 3269})),
    ("database", PROTO_TCP, frozenset({1433, 1521, 3306, 5432, 6379, 9200, 27017})),
    ("remote_desktop", None, frozenset({3389, 5900, 5901})),
]
CLASS_NAMES: list[str] = [name for name, _, _ in _SERVICES] + [
    "tcp_low",  # other TCP service below 1024
    "tcp_high",  # other TCP service port (e.g. FTP passive data)
    "udp_low",
    "udp_high",
    "icmp",
    "icmp6",
    "other_ip",
]
assert len(CLASS_NAMES) == 24, "keep one spare of the 25 paper classes"
N_CLASSES = 25


def profile_class(proto: int, dport: int) -> int:
    """Profile class of a flow from its protocol and responder port (ICMP: ignored)."""
    if proto in (PROTO_TCP, PROTO_UDP):
        for i, (_, p, ports) in enumerate(_SERVICES):
            if (p is None or p == proto) and dport in ports:
                return i
        base = len(_SERVICES)
        if proto == PROTO_TCP:
            return base if dport < 1024 else base + 1
        return base + 2 if dport < 1024 else base + 3
    if proto == PROTO_ICMP:
        return len(_SERVICES) + 4
    if proto == PROTO_ICMP6:
        return len(_SERVICES) + 5
    return len(_SERVICES) + 6
