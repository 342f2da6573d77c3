"""The Zeek <-> dpack event contract, declared once on the Python side (``zeek_scripts/contract.zeek`` is the
Zeek side; ``tests/test_contract.py`` checks that the two agree field by field).

Records travel as vectors of their fields in declaration order, so the order below is the wire format.
Types are the WebSocket JSON v1 ``@data-type`` names; the Zeek type is in the comment.

Bump ``CONTRACT_VERSION`` on any change; the scorer refuses batches of another version with one line on
both sides (``DPack::scorer_refused`` back to Zeek).
"""

from __future__ import annotations

CONTRACT_VERSION = 1

# Zeek -> scorer
SAMPLES_EVENT = "DPack::samples"  # (hdr: BatchHeader, batch: vector of Sample)
# scorer -> Zeek
VERDICTS_EVENT = "DPack::verdicts"  # (batch: vector of Verdict)
REFUSED_EVENT = "DPack::scorer_refused"  # (reason: string)

DEFAULT_SAMPLE_TOPIC = "dpack/samples"
DEFAULT_VERDICT_TOPIC = "dpack/verdicts"

Field = tuple[str, str]

BATCH_HEADER: tuple[Field, ...] = (
    ("version", "count"),  # count: CONTRACT_VERSION of the sending script
    ("node", "string"),  # string: Cluster::node, or "zeek" when standalone
    ("reply_topic", "string"),  # string: where verdicts for this batch go (Cluster::node_topic in a cluster)
    ("policy", "string"),  # string: prefix policy, "first" or "payload"
    ("packets", "count"),  # count: N, packets per flow
    ("bytes", "count"),  # count: L, bytes per packet from the IP header on
    ("sent", "timestamp"),  # time: wall clock when the batch was published
)

SAMPLE: tuple[Field, ...] = (
    ("uid", "string"),  # string: connection uid
    ("orig_h", "address"),  # addr
    ("orig_p", "port"),  # port (ICMP: type)
    ("resp_h", "address"),  # addr
    ("resp_p", "port"),  # port (ICMP: code)
    ("proto", "string"),  # string: "tcp", "udp", "icmp"
    ("ts", "timestamp"),  # time: the connection's first packet
    ("link", "count"),  # count: pcap link type of the frames (packet_source()$link_type)
    ("pkts", "vector"),  # vector of string: base64 of each frame from the link layer on, cut short
    ("is_orig", "vector"),  # vector of bool: sent by the originator
)

VERDICT: tuple[Field, ...] = (
    ("uid", "string"),  # string
    ("orig_h", "address"),  # addr
    ("orig_p", "port"),  # port
    ("resp_h", "address"),  # addr
    ("resp_p", "port"),  # port
    ("score", "real"),  # double
    ("threshold", "real"),  # double
    ("anomalous", "boolean"),  # bool
    ("model", "string"),  # string: name@sha256-prefix
    ("explanation", "string"),  # string: top fields, comma separated
    ("community_id", "string"),  # string
    ("sent", "timestamp"),  # time: the batch header's ``sent``, echoed (Zeek computes the round trip)
    ("scorer_latency", "real"),  # double: seconds from receipt to verdict inside the scorer
)

# Limits a batch must respect; larger ones are refused and counted (Zeek's defaults are far below).
MAX_BATCH = 4096
MAX_PACKETS = 64
MAX_FRAME_BYTES = 1600  # base64-decoded; Zeek cuts frames at DPack::capture_bytes (default 128)
