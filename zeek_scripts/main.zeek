##! Exports the first packets of every connection to the dpack scorer (``dpack serve``) and turns its
##! verdicts into ``dpack.log`` entries and :zeek:see:`DPack::Anomalous_Flow` notices. With
##! :zeek:see:`DPack::export_connections`, finished connections' summaries go to the scorer too; its
##! record detectors answer with ``dpack.log`` entries and :zeek:see:`DPack::Anomalous_Connection`.
##!
##! Standalone, this node listens for the scorer on a WebSocket (:zeek:see:`DPack::listen_port`,
##! the port zeekctl uses). In a cluster, enable zeekctl's WebSocket listener instead; each node
##! publishes its batches to one scorer shard and receives the verdicts on its own node topic, so
##! every notice is raised once, by the node that saw the connection.

@load base/frameworks/cluster
@load base/frameworks/notice
@load base/protocols/conn
@load base/utils/site

@load ./contract

module DPack;

export {
	redef enum Log::ID += { LOG };

	## Policy hook for ``dpack.log`` entries.
	global log_policy: Log::PolicyHook;

	redef enum Notice::Type += {
		## The dpack model scored the first packets of a flow above its calibrated threshold.
		Anomalous_Flow,
		## dpack's flow-record detector found a finished connection anomalous (the notice's
		## ``sub`` names the attack category when a classifier is configured).
		Anomalous_Connection,
	};

	## Whether connections are exported at all.
	option enabled = T;

	## Packets per flow (N). Must match the scorer's model, which refuses other values.
	option packets = 3;

	## Bytes per packet the model reads, from the IP header on (L). Must match the model.
	option packet_bytes = 80;

	## Bytes of each frame that are exported, link-layer header included; must cover
	## :zeek:see:`DPack::packet_bytes` plus the link-layer header (14-22 bytes on Ethernet).
	option capture_bytes = 128;

	## Prefix policy: "first" (the first N packets) or "payload" (the first packet, then the next
	## N-1 packets that carry payload or close the connection; SYN-ACKs and bare ACKs are skipped).
	option policy = "payload";

	## Samples per published batch; a batch is also published every
	## :zeek:see:`DPack::batch_interval`.
	option batch_size = 64;

	## How often a partial batch is published.
	option batch_interval = 10msec;

	## How long to wait for a connection's Nth packet before exporting what it has.
	option max_wait = 5sec;

	## Whether finished connections' summaries are exported for dpack's flow-record detectors
	## (``detectors.records_model`` / ``detectors.classifier_model`` in the scorer's config).
	option export_connections = F;

	## Connections from or to these subnets are not exported.
	option ignore_subnets: set[subnet] = {};

	## How long a notice for the same originator, responder and port is suppressed.
	option notice_suppression = 10min;

	## Topic prefix of the scorer shards; shard i subscribes to ``sample_topic + "/" + i``.
	const sample_topic = "dpack/samples" &redef;

	## Topic for verdicts on a standalone node (cluster nodes use their node topic).
	const verdict_topic = "dpack/verdicts" &redef;

	## Number of scorer shards; batches go round-robin to shards 0 .. scorer_shards-1.
	const scorer_shards = 1 &redef;

	## Whether a standalone node listens for the scorer's WebSocket connection.
	const listen_websocket = T &redef;

	## Address of the WebSocket listener.
	const listen_address = 127.0.0.1 &redef;

	## Port of the WebSocket listener (27759 is the port zeekctl uses).
	const listen_port = 27759/tcp &redef;

	## Whether a standalone node also listens for a native Broker peering (``dpack serve`` with
	## ``zeek.transport: broker``; needs Broker bindings from this same Zeek build on the scorer side).
	const listen_broker = F &redef;

	## Port of the native Broker listener (Zeek's ``Broker::default_port``).
	const broker_port = 9999/tcp &redef;

	## One ``dpack.log`` entry: the verdict on one connection.
	type Info: record {
		## When the verdict arrived.
		ts: time &log;
		## Connection uid.
		uid: string &log;
		## Originator address.
		orig_h: addr &log;
		## Originator port.
		orig_p: port &log;
		## Responder address.
		resp_h: addr &log;
		## Responder port.
		resp_p: port &log;
		## Anomaly score.
		score: double &log;
		## The model's threshold.
		threshold: double &log;
		## Whether score > threshold.
		anomalous: bool &log;
		## Model name and file hash prefix.
		model: string &log;
		## Fields behind the score, for anomalous flows.
		explanation: string &log &optional;
		## Community ID of the flow.
		community_id: string &log &optional;
		## Time from publishing the batch to logging the verdict (wall clock).
		latency: interval &log &optional;
		## Time the scorer spent on the sample.
		scorer_latency: interval &log &optional;
		## Which detector: "prefix" (first packets), "records" or "classifier" (connection
		## summaries).
		detector: string &log &default="prefix";
		## The classifier's attack category of the connection, when one is configured.
		category: string &log &optional;
	};

	## Raised for every ``dpack.log`` entry.
	global log_dpack: event(rec: Info);

	## Called with every batch before it is published; a ``break`` drops the batch.
	global publish_policy: hook(hdr: BatchHeader, batch: vector of Sample);

	## Called with every batch of connection summaries before it is published; a ``break``
	## drops the batch.
	global publish_connections_policy: hook(hdr: BatchHeader, batch: vector of
	    Connection);

	## Per-connection export state (freed with the connection).
	type State: record {
		## Selected frames so far, base64.
		pkts: vector of string;
		## Direction of each selected frame.
		is_orig: vector of bool;
		## Whether the sample was handed to a batch.
		sent: bool &default=F;
	};
}

redef record connection += {
	## dpack's export state for this connection.
	dpack: State &optional;
};

global pending: vector of Sample = vector();
global pending_conns: vector of Connection = vector();
global shard = 0;
global link = 0;
global refusals_reported: set[string] &create_expire=1hr;

function node_name(): string
	{
	return Cluster::is_enabled() ? Cluster::node : "zeek";
	}

function reply_topic(): string
	{
	return Cluster::is_enabled() ? Cluster::node_topic(Cluster::node) :
	    verdict_topic;
	}

function link_type(): count
	{
	if ( link == 0 )
		{
		local lt = packet_source()$link_type;
		link = lt > 0 ? int_to_count(lt) : 1;
		}
	return link;
	}

function header(): BatchHeader
	{
	return BatchHeader($version=contract_version, $node=node_name(),
	    $reply_topic=reply_topic(), $policy=policy, $packets=packets,
	    $bytes=packet_bytes, $sent=current_time());
	}

function next_topic(): string
	{
	local topic = fmt("%s/%d", sample_topic, shard);
	shard = ( shard + 1 ) % scorer_shards;
	return topic;
	}

function flush()
	{
	if ( |pending| > 0 )
		{
		local batch = pending;
		pending = vector();
		local hdr = header();
		if ( hook publish_policy(hdr, batch) )
			{
@if ( Version::at_least("7.1") )
			Cluster::publish(next_topic(), samples, hdr, batch);
@else
			Broker::publish(next_topic(), samples, hdr, batch);
@endif
			}
		}

	if ( |pending_conns| > 0 )
		{
		local conns = pending_conns;
		pending_conns = vector();
		local chdr = header();
		if ( hook publish_connections_policy(chdr, conns) )
			{
@if ( Version::at_least("7.1") )
			Cluster::publish(next_topic(), connections, chdr, conns);
@else
			Broker::publish(next_topic(), connections, chdr, conns);
@endif
			}
		}
	}

function emit(c: connection)
	{
	local st = c$dpack;
	st$sent = T;
	pending += Sample($uid=c$uid, $orig_h=c$id$orig_h, $orig_p=c$id$orig_p,
	    $resp_h=c$id$resp_h, $resp_p=c$id$resp_p, $proto=cat(
	    get_port_transport_proto(c$id$orig_p)), $ts=c$start_time,
	    $link=link_type(), $pkts=st$pkts, $is_orig=st$is_orig);
	st$pkts = vector();
	st$is_orig = vector();
	if ( |pending| >= batch_size )
		flush();
	}

function from_orig(c: connection, p: pkt_hdr): bool
	{
	local src = p?$ip ? p$ip$src : p$ip6$src;
	if ( src != c$id$orig_h )
		return F;
	if ( c$id$orig_h != c$id$resp_h )
		return T;
	if ( p?$tcp )
		return p$tcp$sport == c$id$orig_p;
	if ( p?$udp )
		return p$udp$sport == c$id$orig_p;
	return T;
	}

event DPack::flush_timer()
	{
	flush();
	schedule batch_interval { DPack::flush_timer() };
	}

event DPack::wait_expired(id: conn_id, uid: string)
	{
	if ( ! connection_exists(id) )
		return;
	local c = lookup_connection(id);
	if ( c$uid != uid || ! c?$dpack || c$dpack$sent || |c$dpack$pkts| == 0 )
		return;
	emit(c);
	}

event new_packet(c: connection, p: pkt_hdr)
	{
	if ( ! enabled )
		return;
	if ( ! p?$ip && ! p?$ip6 )
		return;

	local first = F;
	if ( ! c?$dpack )
		{
		if ( c$id$orig_h in ignore_subnets || c$id$resp_h in ignore_subnets )
			{
			c$dpack = State($pkts=vector(), $is_orig=vector(), $sent=T);
			return;
			}
		c$dpack = State($pkts=vector(), $is_orig=vector());
		first = T;
		schedule max_wait { DPack::wait_expired(c$id, c$uid) };
		}
	else if ( c$dpack$sent )
		return;

	# Under "payload", TCP packets without payload that do not close the connection are skipped
	# (the same rule as dpack's flow table: plugin/dpack/packets.py counts_for_prefix).
	if ( policy == "payload"
	    && ! first
	    && p?$tcp
	    && p$tcp$dl == 0
	    && ( p$tcp$flags & 5 ) == 0 )
		return;

	local raw = get_current_packet();
	c$dpack$pkts += encode_base64(raw$data[0:capture_bytes]);
	c$dpack$is_orig += from_orig(c, p);
	if ( |c$dpack$pkts| >= packets )
		emit(c);
	}

# Packet and IP byte counts come from Zeek's connection size analyzer (on by default).
function num_pkts(e: endpoint): count
	{
	return e?$num_pkts ? e$num_pkts : 0;
	}

function ip_bytes(e: endpoint): count
	{
	return e?$num_bytes_ip ? e$num_bytes_ip : 0;
	}

event connection_state_remove(c: connection) &priority=-5
	{
	if ( c?$dpack && ! c$dpack$sent && |c$dpack$pkts| > 0 )
		emit(c);

	if ( ! export_connections )
		return;
	if ( c$id$orig_h in ignore_subnets || c$id$resp_h in ignore_subnets )
		return;

	local state = ( c?$conn && c$conn?$conn_state ) ? c$conn$conn_state : "";
	pending_conns += Connection($uid=c$uid, $orig_h=c$id$orig_h,
	    $orig_p=c$id$orig_p, $resp_h=c$id$resp_h, $resp_p=c$id$resp_p,
	    $proto=cat(get_port_transport_proto(c$id$orig_p)), $ts=c$start_time,
	    $duration=interval_to_double(c$duration), $orig_pkts=num_pkts(
	    c$orig), $resp_pkts=num_pkts(c$resp), $orig_bytes=c$orig$size,
	    $resp_bytes=c$resp$size, $orig_ip_bytes=ip_bytes(c$orig),
	    $resp_ip_bytes=ip_bytes(c$resp),
	    $history=c?$history ? c$history : "", $conn_state=state,
	    $service=join_string_set(c$service, ","));
	if ( |pending_conns| >= batch_size )
		flush();
	}

event DPack::verdicts(batch: vector of Verdict)
	{
	local now = current_time();
	for ( i in batch )
		{
		local v = batch[i];
		local info = Info($ts=network_time(), $uid=v$uid, $orig_h=v$orig_h,
		    $orig_p=v$orig_p, $resp_h=v$resp_h, $resp_p=v$resp_p,
		    $score=v$score, $threshold=v$threshold,
		    $anomalous=v$anomalous, $model=v$model,
		    $latency=now - v$sent, $scorer_latency=double_to_interval(
		    v$scorer_latency));
		if ( v$explanation != "" )
			info$explanation = v$explanation;
		if ( v$community_id != "" )
			info$community_id = v$community_id;
		Log::write(DPack::LOG, info);

		if ( v$anomalous )
			NOTICE([$note=Anomalous_Flow, $uid=v$uid, $id=conn_id($orig_h=v$orig_h,
			    $orig_p=v$orig_p, $resp_h=v$resp_h,
			    $resp_p=v$resp_p), $msg=fmt("dpack: anomalous flow (score %.4g > threshold %.4g, model %s)",
			    v$score, v$threshold, v$model), $sub=v$explanation,
			    $identifier=cat(v$orig_h, v$resp_h, v$resp_p),
			    $suppress_for=notice_suppression]);
		}
	}

event DPack::connection_verdicts(batch: vector of ConnectionVerdict)
	{
	local now = current_time();
	for ( i in batch )
		{
		local v = batch[i];
		local info = Info($ts=network_time(), $uid=v$uid, $orig_h=v$orig_h,
		    $orig_p=v$orig_p, $resp_h=v$resp_h, $resp_p=v$resp_p,
		    $score=v$score, $threshold=v$threshold,
		    $anomalous=v$anomalous, $model=v$model,
		    $latency=now - v$sent, $scorer_latency=double_to_interval(
		    v$scorer_latency), $detector=v$detector);
		if ( v$category != "" )
			info$category = v$category;
		if ( v$community_id != "" )
			info$community_id = v$community_id;
		Log::write(DPack::LOG, info);

		if ( v$anomalous )
			NOTICE([$note=Anomalous_Connection, $uid=v$uid, $id=conn_id($orig_h=v$orig_h,
			    $orig_p=v$orig_p, $resp_h=v$resp_h,
			    $resp_p=v$resp_p), $msg=fmt("dpack: anomalous connection (%s score %.4g > threshold %.4g, model %s)",
			    v$detector, v$score, v$threshold, v$model),
			    $sub=v$category == "" ? "" : fmt(
			    "category=%s confidence=%.2f", v$category,
			    v$confidence), $identifier=cat(v$orig_h, v$resp_h,
			    v$resp_p, v$category),
			    $suppress_for=notice_suppression]);
		}
	}

event DPack::scorer_refused(reason: string)
	{
	if ( reason in refusals_reported )
		return;
	add refusals_reported[reason];
	Reporter::error(fmt("dpack: the scorer refused this node's samples: %s",
	    reason));
	}

event zeek_init() &priority=5
	{
	Log::create_stream(DPack::LOG, [$columns=Info, $ev=log_dpack, $path="dpack",
	    $policy=log_policy]);

	if ( capture_bytes < packet_bytes + 14 )
		Reporter::warning(fmt("dpack: DPack::capture_bytes=%d cannot hold %d bytes after a link header",
		    capture_bytes, packet_bytes));

	if ( ! Cluster::is_enabled() )
		{
@if ( Version::at_least("7.1") )
		Cluster::subscribe(verdict_topic);
@else
		Broker::subscribe(verdict_topic);
@endif
		if ( listen_websocket )
			{
@if ( Version::at_least("8.0") )
			Cluster::listen_websocket(Cluster::WebSocketServerOptions(
			    $listen_addr=listen_address,
			    $listen_port=listen_port));
@else
			Broker::listen_websocket(cat(listen_address), listen_port);
@endif
			}
		if ( listen_broker )
			Broker::listen(cat(listen_address), broker_port);
		}

	schedule batch_interval { DPack::flush_timer() };
	}

event zeek_done()
	{
	flush();
	}
