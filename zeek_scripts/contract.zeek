##! The event contract between Zeek and the dpack scorer (``dpack serve``).
##!
##! Its Python twin is ``plugin/dpack/zeek/contract.py``; records travel as vectors of their fields in
##! declaration order, so the order below is the wire format. Change both together and bump
##! :zeek:see:`DPack::contract_version`.

module DPack;

export {
	## Version of this contract. The scorer refuses batches of another version and answers with
	## :zeek:see:`DPack::scorer_refused`.
	const contract_version = 5;

	## Upper bound of a batch's size on the wire (Broker's JSON text, bytes). A batch is
	## published early when its estimated size would pass it; the scorer refuses larger
	## frames (and counts their flows as dropped).
	const max_batch_text = 3145728;

	## Most entries in one batch; :zeek:see:`DPack::batch_size` above it is cut to it.
	const max_batch = 4096;

	## Sent with every batch of samples.
	type BatchHeader: record {
		## Contract version of the sending script.
		version: count;
		## Name of the sending node (``Cluster::node``), or "zeek" when standalone.
		node: string;
		## Topic on which the scorer publishes the verdicts for this batch.
		reply_topic: string;
		## Prefix policy: "first" or "payload".
		policy: string;
		## Packets per flow (N).
		packets: count;
		## Bytes per packet from the IP header on (L).
		bytes: count;
		## Seconds a connection's first packets are waited for (:zeek:see:`DPack::max_wait`).
		max_wait: double;
		## Wall-clock time at which the batch was published.
		sent: time;
	};

	## The first packets of one connection.
	type Sample: record {
		## Connection uid.
		uid: string;
		## Originator address.
		orig_h: addr;
		## Originator port (ICMP: type).
		orig_p: port;
		## Responder address.
		resp_h: addr;
		## Responder port (ICMP: code).
		resp_p: port;
		## IP protocol number (6 TCP, 17 UDP, 1 ICMP, 58 ICMPv6, others for Zeek's
		## ``unknown_transport`` connections).
		proto: count;
		## Time of the connection's first packet.
		ts: time;
		## Network time at which the sample was complete: its Nth packet, its first packet
		## plus :zeek:see:`DPack::max_wait`, or the connection's end.
		ready: time;
		## pcap link type of the frames (``packet_source()$link_type``).
		link: count;
		## Base64 of each selected frame, from the link layer on, cut to
		## :zeek:see:`DPack::capture_bytes`.
		pkts: vector of string;
		## Whether each frame was sent by the originator.
		is_orig: vector of bool;
	};

	## The scorer's verdict on one connection.
	type Verdict: record {
		## Connection uid.
		uid: string;
		## Originator address.
		orig_h: addr;
		## Originator port.
		orig_p: port;
		## Responder address.
		resp_h: addr;
		## Responder port.
		resp_p: port;
		## Anomaly score (the autoencoder's reconstruction error).
		score: double;
		## The model's calibrated threshold; anomalous means score > threshold.
		threshold: double;
		## Whether the flow is anomalous.
		anomalous: bool;
		## Model name and the first hex digits of its file hash.
		model: string;
		## The fields that contributed most to the score, comma separated.
		explanation: string;
		## Community ID of the flow.
		community_id: string;
		## The batch header's ``sent`` time, echoed.
		sent: time;
		## Seconds the scorer took from receipt to verdict.
		scorer_latency: double;
		## Which detector decided: "prefix" (the first packets alone) or "context" (the
		## host-context stage: the flow in the context of its originator's recent flows; then
		## ``score`` may be under ``threshold`` and the explanation names ``host.*`` features).
		detector: string;
	};

	## The summary of one finished connection (the fields of ``conn.log`` the flow-record
	## detectors read).
	type Connection: record {
		## Connection uid.
		uid: string;
		## Originator address.
		orig_h: addr;
		## Originator port (ICMP: type).
		orig_p: port;
		## Responder address.
		resp_h: addr;
		## Responder port (ICMP: code).
		resp_p: port;
		## IP protocol number (as in :zeek:type:`DPack::Sample`).
		proto: count;
		## Time of the connection's first packet.
		ts: time;
		## Duration in seconds.
		duration: double;
		## Packets sent by the originator.
		orig_pkts: count;
		## Packets sent by the responder.
		resp_pkts: count;
		## Payload bytes sent by the originator.
		orig_bytes: count;
		## Payload bytes sent by the responder.
		resp_bytes: count;
		## IP-level bytes sent by the originator.
		orig_ip_bytes: count;
		## IP-level bytes sent by the responder.
		resp_ip_bytes: count;
		## The connection's history string, as in ``conn.log``.
		history: string;
		## The connection state, as in ``conn.log``.
		conn_state: string;
		## The services Zeek's analyzers confirmed, comma separated.
		service: string;
	};

	## The scorer's verdict on one connection summary.
	type ConnectionVerdict: record {
		## Connection uid.
		uid: string;
		## Originator address.
		orig_h: addr;
		## Originator port.
		orig_p: port;
		## Responder address.
		resp_h: addr;
		## Responder port.
		resp_p: port;
		## Which detector decided: "records" (autoencoder) or "classifier".
		detector: string;
		## Anomaly score (reconstruction error, or 1 - P(benign) for the classifier alone).
		score: double;
		## The detector's threshold; anomalous means score > threshold.
		threshold: double;
		## Whether the connection is anomalous.
		anomalous: bool;
		## The classifier's attack category, or "" when no classifier is configured.
		category: string;
		## The classifier's probability for that category.
		confidence: double;
		## Model name(s) and the first hex digits of the file hashes.
		model: string;
		## Community ID of the connection.
		community_id: string;
		## The batch header's ``sent`` time, echoed.
		sent: time;
		## Seconds the scorer took from receipt to verdict.
		scorer_latency: double;
	};

	## Zeek to scorer: a batch of samples.
	global samples: event(hdr: BatchHeader, batch: vector of Sample);

	## Zeek to scorer: a batch of finished connections.
	global connections: event(hdr: BatchHeader, batch: vector of Connection);

	## Scorer to Zeek: verdicts for samples of earlier batches.
	global verdicts: event(batch: vector of Verdict) &is_used;

	## Scorer to Zeek: verdicts for connections of earlier batches.
	global connection_verdicts: event(batch: vector of ConnectionVerdict) &is_used;

	## Scorer to Zeek: the scorer refused this node's batches (for example because its model
	## expects another prefix than the one configured here). Reported once per reason.
	global scorer_refused: event(reason: string) &is_used;

	## Scorer to Zeek: a condition of the scorer an analyst must see. ``kind`` is
	## "model_drift" (the scores of a service drifted from the model's baseline: a
	## :zeek:see:`DPack::Model_Drift` notice), "guard_on" (the model flags most hosts of this
	## site: notices are held, verdicts of model "guarded:NAME" are logged only) or "guard_off".
	global scorer_status: event(kind: string, msg: string) &is_used;
}
