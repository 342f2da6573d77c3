"""The Zeek <-> dpack event contract, declared once on the Python side (``zeek_scripts/contract.zeek`` is the
Zeek side; ``tests/test_codec.py`` checks that the two agree field by field).

Records travel as vectors of their fields in declaration order, so the order below is the wire format.
Types are the WebSocket JSON v1 ``@data-type`` names; the Zeek type is in the comment.

Bump ``CONTRACT_VERSION`` on any change; the scorer refuses batches of another version with one line on
both sides (``DPack::scorer_refused`` back to Zeek).
"""

from __future__ import annotations

# 2: connection summaries and their verdicts (flow-record detectors); 3: max_wait in the batch header,
# each sample's ready time, the IP protocol number as ``proto`` (Zeek's unknown_transport connections too);
# 4: ``DPack::scorer_status`` (drift and the day-one guard); 5: the flow verdict's ``detector``
CONTRACT_VERSION = 5

# Zeek -> scorer
SAMPLES_EVENT = "DPack::samples"  # (hdr: BatchHeader, batch: vector of Sample)
CONNECTIONS_EVENT = "DPack::connections"  # (hdr: BatchHeader, batch: vector of Connection)
# scorer -> Zeek
VERDICTS_EVENT = "DPack::verdicts"  # (batch: vector of Verdict)
CONNECTION_VERDICTS_EVENT = "DPack::connection_verdicts"  # (batch: vector of ConnectionVerdict)
REFUSED_EVENT = "DPack::scorer_refused"  # (reason: string)
# (kind: string, msg: string); kinds: model_drift, guard_on, guard_off
STATUS_EVENT = "DPack::scorer_status"
STATUS_KINDS = ("model_drift", "guard_on", "guard_off")

DEFAULT_SAMPLE_TOPIC = "dpack/samples"
DEFAULT_VERDICT_TOPIC = "dpack/verdicts"

Field = tuple[str, str]

# The flow keys that open every per-connection record (ICMP: type in orig_p, code in resp_p).
FLOW_KEYS: tuple[Field, ...] = (
    ("uid", "string"),  # string: connection uid
    ("orig_h", "address"),  # addr
    ("orig_p", "port"),  # port
    ("resp_h", "address"),  # addr
    ("resp_p", "port"),  # port
)

BATCH_HEADER: tuple[Field, ...] = (
    ("version", "count"),  # count: CONTRACT_VERSION of the sending script
    ("node", "string"),  # string: Cluster::node, or "zeek" when standalone
    ("reply_topic", "string"),  # string: where verdicts for this batch go (Cluster::node_topic in a cluster)
    ("policy", "string"),  # string: prefix policy, "first" or "payload"
    ("packets", "count"),  # count: N, packets per flow
    ("bytes", "count"),  # count: L, bytes per packet from the IP header on
    ("max_wait", "real"),  # double: seconds DPack::max_wait waits for a connection's first packets
    ("sent", "timestamp"),  # time: wall clock when the batch was published
)

SAMPLE: tuple[Field, ...] = (
    *FLOW_KEYS,
    ("proto", "count"),  # count: IP protocol number (c$id$proto)
    ("ts", "timestamp"),  # time: the connection's first packet
    ("ready", "timestamp"),  # time: network time when the sample was complete (Nth packet, max_wait, end)
    ("link", "count"),  # count: pcap link type of the frames (packet_source()$link_type)
    ("pkts", "vector"),  # vector of string: base64 of each frame from the link layer on, cut short
    ("is_orig", "vector"),  # vector of bool: sent by the originator
)

VERDICT: tuple[Field, ...] = (
    *FLOW_KEYS,
    ("score", "real"),  # double
    ("threshold", "real"),  # double
    ("anomalous", "boolean"),  # bool
    ("model", "string"),  # string: name@sha256-prefix
    ("explanation", "string"),  # string: top fields, comma separated
    ("community_id", "string"),  # string
    ("sent", "timestamp"),  # time: the batch header's ``sent``, echoed (Zeek computes the round trip)
    ("scorer_latency", "real"),  # double: seconds from receipt to verdict inside the scorer
    ("detector", "string"),  # string: "prefix" or "context" (the host-context stage decided; v5)
)

CONNECTION: tuple[Field, ...] = (
    *FLOW_KEYS,
    ("proto", "count"),  # count: IP protocol number
    ("ts", "timestamp"),  # time: c$start_time
    ("duration", "real"),  # double: interval_to_double(c$duration)
    ("orig_pkts", "count"),  # count: c$orig$num_pkts
    ("resp_pkts", "count"),  # count: c$resp$num_pkts
    ("orig_bytes", "count"),  # count: c$orig$size (payload bytes)
    ("resp_bytes", "count"),  # count: c$resp$size
    ("orig_ip_bytes", "count"),  # count: c$orig$num_bytes_ip
    ("resp_ip_bytes", "count"),  # count: c$resp$num_bytes_ip
    ("history", "string"),  # string: c$history
    ("conn_state", "string"),  # string: c$conn$conn_state
    ("service", "string"),  # string: the DPD services, comma separated (logged, not a model feature)
)

CONNECTION_VERDICT: tuple[Field, ...] = (
    *FLOW_KEYS,
    ("detector", "string"),  # string: "records" (autoencoder) or "classifier" when only it is configured
    ("score", "real"),  # double: reconstruction error, or 1 - P(benign) for the classifier alone
    ("threshold", "real"),  # double
    ("anomalous", "boolean"),  # bool
    ("category", "string"),  # string: the classifier's category ("" when none is configured)
    ("confidence", "real"),  # double: the classifier's probability of that category (0 when none)
    ("model", "string"),  # string: name@sha256-prefix of the model(s)
    ("community_id", "string"),  # string
    ("sent", "timestamp"),  # time: the batch header's ``sent``, echoed
    ("scorer_latency", "real"),  # double
)

# Limits a batch must respect; larger ones are refused and counted (Zeek's defaults are far below).
MAX_BATCH = 4096
MAX_BATCH_TEXT = 3 * 1024 * 1024  # Zeek publishes a batch before its JSON would pass this (max_batch_text)
MAX_PACKETS = 64
MAX_TEXT = 256  # history, conn_state and service strings of a connection summary
MAX_FRAME_BYTES = 1600  # base64-decoded; Zeek cuts frames at DPack::capture_bytes (default 128)
