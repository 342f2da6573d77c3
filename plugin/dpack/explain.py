"""An explanation token in words (``dpack explain p2.tcp.flags``, and the legend under ``dpack score``'s
top flows): which packet, which field, and what the benign traffic usually has there. Tokens are
``p<slot>.<field>`` (``traffic/fields.py``, ``prefix/scorer.py``: ``direction`` and ``absent`` too), the
host-context stage's ``host.*`` (``context/state.py``) and the marker ``learning``. Slots: p1 is the
flow's first packet; under the ``payload`` policy p2 and p3 are the next packets that carry data or close
the connection (docs/manual.md, "Reading an explanation")."""

from __future__ import annotations

import re

from .context.state import FEATURES

# field -> (what it is, what benign traffic usually has there)
FIELDS = {
    "tcp.flags": ("the TCP flags (SYN, SYN-ACK, RST, FIN, PSH, ACK)", "a SYN first, then ACK/PSH with data"),
    "tcp.opt": ("the TCP options (MSS, window scale, SACK, timestamps)", "the options of the site's usual stacks"),
    "tcp.win": ("the TCP window", "the site's usual stacks' windows"),
    "tcp.seq": ("the TCP sequence number", "a random-looking start"),
    "tcp.ack": ("the TCP acknowledgement number", "the other side's sequence number plus the data seen"),
    "tcp.off": ("the TCP header length (how many option bytes)", "the site's usual stacks' header lengths"),
    "tcp.sport": ("the TCP source port", "an ephemeral port from the originator, the service's from the responder"),
    "tcp.dport": ("the TCP destination port", "the service's port"),
    "tcp.urp": ("the TCP urgent pointer", "zero"),
    "udp.len": ("the UDP length", "the service's usual request and answer sizes"),
    "udp.sport": ("the UDP source port", "an ephemeral port, or the service's"),
    "udp.dport": ("the UDP destination port", "the service's port"),
    "icmp.type": ("the ICMP type", "echo, echo reply, or an error the network sends"),
    "icmp.code": ("the ICMP code", "the usual code of its type"),
    "icmp.rest": ("the rest of the ICMP header (identifier and sequence)", "small counters"),
    "ip.ttl": ("the IP TTL (the sender's initial TTL minus the hops: its OS and path)", "the site's hosts' TTLs"),
    "ip6.hlim": ("the IPv6 hop limit (like the TTL)", "the site's hosts' hop limits"),
    "ip.len": ("the IP packet length", "the service's usual packet sizes"),
    "ip6.plen": ("the IPv6 payload length", "the service's usual packet sizes"),
    "ip.id": ("the IP identification", "the sender's OS's pattern"),
    "ip.tos": ("the IP type of service / DSCP", "zero"),
    "ip.frag": ("the IP fragment flags and offset", "don't-fragment, no offset"),
    "ip.proto": ("the IP protocol", "TCP, UDP or ICMP"),
    "direction": ("who sent the packet in this slot (originator or responder)", "a request, then an answer"),
    "absent": ("no packet in this slot: the flow had fewer packets (nobody answered, or it ended)", "an answer"),
    "pad": ("the zero padding after a short packet (shorter than the bytes the model reads)", "packets of the service's usual length"),
}  # fmt: skip
HOST = {
    "host.new_flows_1s": "the originator's new flows in about the last second, against its own benign level",
    "host.new_flows_10s": "the originator's new flows in about the last 10 seconds, against its own benign level",
    "host.new_flows_60s": "the originator's new flows in about the last minute, against its own benign level",
    "host.responders_60s": "distinct responders the originator reached in the last minute (a sweep reaches many)",
    "host.ports_60s": "distinct responder ports the originator reached in the last minute (a scan reaches many)",
    "host.same_service_60s": "flows to this same responder:port in the last minute, against the host's and the "
    "service's benign repeats (a flood or a brute force repeats one service)",
    "host.failed_60s": "the originator's recent flows that got no answer or a reset",
    "host.failed_share_60s": "the share of the originator's recent flows that failed",
    "host.flagged_share_60s": "the share of the originator's recent flows the prefix model flagged",
}
assert set(HOST) == set(FEATURES), "every host-context feature needs words"
UNKNOWN = "not a dpack explanation token"
_SLOT = re.compile(r"^p(\d+)\.(.+)$")
_PAYLOAD = re.compile(r"^payload\[(\d+)\]$")


def describe(token: str) -> str:
    """The token in words; an unknown token says so (it may come from a newer dpack)."""
    if token in HOST:
        return HOST[token]
    if token == "learning":
        return "dpack serve is learning this site: no verdict is anomalous until the site model is in"
    m = _SLOT.match(token)
    if m is None:
        return UNKNOWN
    slot, field = int(m.group(1)), m.group(2)
    where = "the flow's first packet" if slot == 1 else f"packet {slot} of the flow's prefix"
    p = _PAYLOAD.match(field)
    if p:
        k = int(p.group(1))
        return f"{where}: byte {k} of its payload; benign: the protocol's usual first bytes (GET, a TLS ClientHello, a DNS header)"  # fmt: skip
    what, usual = FIELDS.get(field, (f"the {field} field", "the values of the site's benign flows"))
    return f"{where}: {what}; benign: {usual}"


def legend(tokens: list[str]) -> list[str]:
    """One line per distinct token, in first-seen order: ``TOKEN  words``."""
    seen: dict[str, None] = dict.fromkeys(tokens)
    width = max((len(t) for t in seen), default=0)
    return [f"{t:<{width}}  {describe(t)}" for t in seen]
