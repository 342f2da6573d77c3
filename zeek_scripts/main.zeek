##! Exports the first packets of every connection to the dpack scorer (``dpack serve``) and turns its
##! verdicts into ``dpack.log`` entries and :zeek:see:`DPack::Anomalous_Flow` notices. With
##! :zeek:see:`DPack::export_connections`, finished connections' summaries go to the scorer too; its
##! record detectors answer with ``dpack.log`` entries and :zeek:see:`DPack::Anomalous_Connection`.
##!
##! Standalone, this node listens for the scorer on a WebSocket (:zeek:see:`DPack::listen_port`,
##! the port zeekctl uses). In a cluster, enable the manager's WebSocket listener instead; each node
##! publishes its batches to the scorer shard of the connection's originator and receives the
##! verdicts on its own node topic, so every notice is raised once, by the node that saw the
##! connection. Reading a trace (``zeek -r``), nothing listens unless
##! :zeek:see:`DPack::score_traces` is set, so offline runs end with the trace as usual.

@load base/misc/version
@load base/frameworks/cluster
@load base/frameworks/notice
@load base/protocols/conn

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
		## The scores of a service's unflagged flows drifted from what the model learned
		## (``sub`` names the service): the site changed, or the model no longer fits it.
		Model_Drift,
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

	## How long to wait for a connection's Nth packet before exporting what it has. Part of what
	## the model reads (the scorer refuses batches whose value differs from its model's).
	option max_wait = 5sec;

	## The prefix is taken from a connection's first this many packets: later ones are never
	## looked at (dpack's flow table has the same limit). Fixed: Zeek counts them with
	## connection packet thresholds (:zeek:see:`conn_generic_packet_threshold_crossed`), which are
	## set at start-up.
	const scan_packets = 16;

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

	## Number of scorer shards. A connection goes to the shard of its originator (a hash of the
	## originator's address under :zeek:see:`DPack::shard_prefix_v4` /
	## :zeek:see:`DPack::shard_prefix_v6`), so every flow of one host reaches the same shard.
	const scorer_shards = 1 &redef;

	## Prefix length that defines one originator for sharding, IPv4.
	const shard_prefix_v4 = 32 &redef;

	## Prefix length that defines one originator for sharding, IPv6 (a /64 is one host's
	## network: privacy addresses change within it).
	const shard_prefix_v6 = 64 &redef;

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

	## Whether ``zeek -r`` (reading a trace) also listens for a scorer. Off by default, so that an
	## offline run at a site whose policy loads dpack ends with its trace and never takes the live
	## sensor's port. When on, Zeek holds the trace until a scorer connects (start ``dpack serve``
	## first; while the trace is held no timer runs, so Zeek waits until interrupted); at the end
	## of the trace it exports what is left and terminates when every verdict has arrived, or
	## when the scorer goes away.
	const score_traces = F &redef;

	## One ``dpack.log`` entry: the verdict on one connection.
	type Info: record {
		## When the verdict arrived.
		ts: time &log;
		## Connection uid.
		uid: string &log;
		## The connection's endpoints.
		id: conn_id &log;
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
		## Which detector: "prefix" (first packets), "context" (the host-context stage, at
		## the same moment), "records" or "classifier" (connection summaries).
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

	## The scorer shard of an originator's connections (0 .. :zeek:see:`DPack::scorer_shards` - 1).
	global shard_of: function(a: addr): count;

	## Per-connection export state (freed with the connection).
	type State: record {
		## Selected frames so far, base64.
		pkts: vector of string;
		## Direction of each selected frame.
		is_orig: vector of bool;
		## Whether the sample was handed to a batch (or the connection is not exported).
		sent: bool &default=F;
	};
}

redef record connection += {
	## dpack's export state for this connection.
	dpack: State &optional;
};

## TCP flags that close a connection; a packet with one of them takes a prefix slot under the
## "payload" policy even without payload.
const TCP_FIN_OR_RST = 5;

# dpack looks at a connection's first packets only: the first one in new_connection, then the next
# ones through Zeek's generic packet thresholds, each raised by the connection-size analyzer at one
# packet count. A new_packet handler would run for every packet Zeek sees: an empty one alone adds
# 11.5% to Zeek's default scripts on lab-dev benign-val (instructions, callgrind), these thresholds
# 2.7%. The set is additive: other handlers of the event see these counts too.
redef ConnThreshold::generic_packet_thresholds += {
	2,
	3,
	4,
	5,
	6,
	7,
	8,
	9,
	10,
	11,
	12,
	13,
	14,
	15,
	16
};

# Samples waiting to be published, one vector per scorer shard (sized in zeek_init).
global pending: vector of vector of Sample;
# Estimated JSON text of each pending batch, against DPack::max_batch_text.
global pending_text: vector of count;
global pending_count = 0;
global pending_conns: vector of Connection = vector();
global pending_conns_text = 0;
global flush_scheduled = F;
# this node's name and reply topic (set in zeek_init)
global node = "zeek";
global replies = verdict_topic;
global link = 0;
global refusals_reported: set[string] &create_expire=1hr;
# score_traces: connections still collecting (emitted when the trace ends: its network time stops
# there, so their wait timers would not run), samples exported whose verdicts have not arrived,
# whether the trace is done
global trace_collecting: table[string] of connection;
global outstanding = 0;
global trace_done = F;

global flush_timer: event();
global finish: Conn::RemovalHook;
# The wait timer carries the connection itself: lookup_connection() does not find every ICMP
# connection (Zeek 8.0.10 misses those whose originator's address sorts after the responder's).
global wait_expired: event(c: connection);

function link_type(): count
	{
	if ( link == 0 )
		{
		local lt = packet_source()$link_type;
		link = lt > 0 ? int_to_count(lt) : 1;
		}
	return link;
	}

function ip_proto(c: connection): count
	{
@if ( Version::at_least("7.1") )
	return c$id$proto;
@else
	local t = get_port_transport_proto(c$id$orig_p);
	if ( t == tcp )
		return 6;
	if ( t == udp )
		return 17;
	if ( t == icmp )
		return is_v6_addr(c$id$orig_h) ? 58 : 1;
	return 0;
@endif
	}

function header(): BatchHeader
	{
	return BatchHeader($version=contract_version, $node=node, $reply_topic=replies,
	    $policy=policy, $packets=packets, $bytes=packet_bytes,
	    $max_wait=interval_to_double(max_wait), $sent=current_time());
	}

## The scorer shard of an originator: a multiplicative hash of its address under the shard
## prefix, so that all of one host's flows go to one shard.
function shard_of(a: addr): count
	{
	if ( scorer_shards <= 1 )
		return 0;
	local v = addr_to_counts(subnet_to_addr(mask_addr(a, is_v4_addr(a) ?
	    shard_prefix_v4 : shard_prefix_v6)));
	local h = 0;
	for ( i in v )
		h = ( ( h % 1000003 ) * 2654435761 + v[i] ) % 4294967296;
	# the high half of the product: its low bits would follow the address's own low bits
	return ( ( ( h * 2654435761 ) % 4294967296 ) / 65536 ) % scorer_shards;
	}

function publish_samples(shard: count, batch: vector of Sample)
	{
	local hdr = header();
	if ( hook publish_policy(hdr, batch) )
		{
		if ( score_traces && reading_traces() )
			outstanding += |batch|;
		local topic = fmt("%s/%d", sample_topic, shard);
@if ( Version::at_least("7.1") )
		Cluster::publish(topic, samples, hdr, batch);
@else
		Broker::publish(topic, samples, hdr, batch);
@endif
		}
	}

function flush()
	{
	if ( pending_count > 0 )
		{
		for ( shard in pending )
			{
			if ( |pending[shard]| > 0 )
				{
				publish_samples(shard, pending[shard]);
				pending[shard] = vector();
				pending_text[shard] = 0;
				}
			}
		pending_count = 0;
		}

	if ( |pending_conns| > 0 )
		{
		local conns = pending_conns;
		pending_conns = vector();
		pending_conns_text = 0;
		local chdr = header();
		if ( hook publish_connections_policy(chdr, conns) )
			{
			local topic = fmt("%s/%d", sample_topic, shard_of(conns[0]$orig_h));
@if ( Version::at_least("7.1") )
			Cluster::publish(topic, connections, chdr, conns);
@else
			Broker::publish(topic, connections, chdr, conns);
@endif
			}
		}
	}

# A flush is scheduled when the first sample of a batch is queued (no timer runs while idle).
function schedule_flush()
	{
	if ( ! flush_scheduled )
		{
		flush_scheduled = T;
		schedule batch_interval { DPack::flush_timer() };
		}
	}

function emit(c: connection)
	{
	local st = c$dpack;
	st$sent = T;
	if ( score_traces && reading_traces() )
		delete trace_collecting[c$uid];
	if ( |st$pkts| == 0 )
		return;
	local id = c$id;
	local shard = scorer_shards > 1 ? shard_of(id$orig_h) : 0;
	local batch = pending[shard];
	batch += Sample($uid=c$uid, $orig_h=id$orig_h, $orig_p=id$orig_p,
	    $resp_h=id$resp_h, $resp_p=id$resp_p, $proto=ip_proto(c),
	    $ts=c$start_time, $ready=network_time(), $link=link_type(),
	    $pkts=st$pkts, $is_orig=st$is_orig);
	++pending_count;
	# JSON text of the sample: about 700 bytes of fields and type tags, 80 per packet
	# besides its base64 (measured: at most 620 and 70 for IPv6 flows; see test_contract).
	local text = 700;
	for ( i in st$pkts )
		text += |st$pkts[i]| + 80;
	st$pkts = vector();
	st$is_orig = vector();
	pending_text[shard] += text;
	# room for one more sample of the largest size this node exports
	local room = 700 + packets * ( ( capture_bytes + 2 ) / 3 * 4 + 80 );
	if ( |batch| >= batch_size
	    || |batch| >= max_batch
	    || pending_text[shard] + room >= max_batch_text )
		{
		publish_samples(shard, batch);
		pending_count -= |batch|;
		pending[shard] = vector();
		pending_text[shard] = 0;
		}
	else
		schedule_flush();
	}

function from_orig(c: connection, p: raw_pkt_hdr): bool
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

## Whether a packet is a datagram Zeek reassembled from fragments: the frame it has at hand is
## only the last fragment, so such packets take no prefix slot (dpack's flow table leaves
## fragments out too).
function reassembled(p: raw_pkt_hdr): bool
	{
	if ( p?$ip )
		return p$ip$MF || p$ip$offset > 0;
	for ( i in p$ip6$exts )
		{
		if ( p$ip6$exts[i]$id == 44 )
			return T;
		}
	return F;
	}

hook finish(c: connection)
	{
	if ( c?$dpack && ! c$dpack$sent )
		emit(c);
	}

function start(c: connection): bool
	{
	if ( ! enabled
	    || c?$tunnel
	    || c$id$orig_h in ignore_subnets
	    || c$id$resp_h in ignore_subnets )
		{
		c$dpack = State($pkts=vector(), $is_orig=vector(), $sent=T);
		return F;
		}
	c$dpack = State($pkts=vector(), $is_orig=vector());
	if ( score_traces && reading_traces() )
		trace_collecting[c$uid] = c;
	Conn::register_removal_hook(c, finish);
	schedule max_wait { DPack::wait_expired(c) };
	return T;
	}

event DPack::flush_timer()
	{
	flush_scheduled = F;
	flush();
	}

event DPack::wait_expired(c: connection)
	{
	if ( ! c$dpack$sent )
		emit(c);
	}

# What dpack needs to know of one packet: whether it can take a prefix slot at all, whether it
# came from the originator, whether the "payload" policy skips it.
type Seen: record {
	ok: bool;
	orig: bool &default=F;
	bare: bool &default=F;
};

function l3_offset(data: string): int
	{
	local lt = link_type();
	if ( lt == 1 )
		{
		local off = 12;
		while ( off + 4 <= |data|
		    && bytestring_to_count(data[off : off + 2]) in set(0x8100, 0x88a8, 0x9100, 0x9200) )
			off += 4;
		return off + 2;
		}
	if ( lt in set(101, 12, 14, 228, 229) )
		return 0;
	if ( lt == 113 )
		return 16;
	if ( lt == 276 )
		return 20;
	if ( lt == 0 || lt == 108 )
		return 4;
	return -1;
	}

## The facts of a frame Zeek gives no header for: a packet cut short of its own IP length by a
## capture's snaplen (Zeek's analyzers skip it; dpack's flow table reads what it has, and so
## does this).
function seen_raw(c: connection): Seen
	{
	local data = get_current_packet()$data;
	local off = l3_offset(data);
	if ( off < 0 || |data| < off + 20 )
		return Seen($ok=F);
	local b0 = bytestring_to_count(data[off]);
	local src: addr;
	local proto: count;
	local l4: int;
	local total: count; # transport header and payload, from the IP header's lengths
	if ( b0 / 16 == 4 )
		{
		if ( bytestring_to_count(data[off + 6 : off + 8]) % 16384 != 0 )
			return Seen($ok=F); # a fragment
		src = raw_bytes_to_v4_addr(data[off + 12 : off + 16]);
		proto = bytestring_to_count(data[off + 9]);
		local ihl = ( b0 % 16 ) * 4;
		l4 = off + ihl;
		local ip_len = bytestring_to_count(data[off + 2 : off + 4]);
		total = ip_len > ihl ? ip_len - ihl : 0;
		}
	else if ( b0 / 16 == 6 && |data| >= off + 40 )
		{
		src = raw_bytes_to_v6_addr(data[off + 8 : off + 24]);
		proto = bytestring_to_count(data[off + 6]);
		l4 = off + 40;
		total = bytestring_to_count(data[off + 4 : off + 6]);
		}
	else
		return Seen($ok=F);
	local s = Seen($ok=T, $orig=src == c$id$orig_h);
	if ( proto == 6 && |data| >= l4 + 14 )
		{
		if ( c$id$orig_h == c$id$resp_h )
			s$orig = bytestring_to_count(data[l4 : l4 + 2]) == port_to_count(
			    c$id$orig_p);
		local doff = ( bytestring_to_count(data[l4 + 12]) / 16 ) * 4;
		s$bare = total <= doff && ( bytestring_to_count(data[l4 + 13]) &
		    TCP_FIN_OR_RST ) == 0;
		}
	return s;
	}

## One of a connection's first packets (the current one), while its sample is collected.
function take(c: connection, st: State)
	{
	local p = get_current_packet_header();
	local orig: bool;
	local bare = F;
	if ( p?$ip || p?$ip6 )
		{
		if ( reassembled(p) )
			return;
		orig = from_orig(c, p);
		bare = p?$tcp && p$tcp$dl == 0 && ( p$tcp$flags & TCP_FIN_OR_RST ) == 0;
		}
	else
		{
		local s = seen_raw(c);
		if ( ! s$ok )
			return;
		orig = s$orig;
		bare = s$bare;
		}
	# Under "payload", TCP packets without payload that do not close the connection are skipped
	# after the first (the same rule as dpack's flow table: plugin/dpack/traffic/encode.py
	# counts_for_prefix).
	if ( bare && |st$pkts| > 0 && policy == "payload" )
		return;
	st$pkts += encode_base64(get_current_packet()$data[0:capture_bytes]);
	st$is_orig += orig;
	if ( |st$pkts| >= packets )
		emit(c);
	}

event new_connection(c: connection)
	{
	if ( start(c) )
		take(c, c$dpack);
	}

event conn_generic_packet_threshold_crossed(c: connection, threshold: count)
	{
	if ( threshold > scan_packets || ! c?$dpack )
		return;
	local st = c$dpack;
	if ( ! st$sent )
		take(c, st);
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
	if ( ! export_connections )
		return;
	if ( ! c?$dpack
	    || c?$tunnel
	    || c$id$orig_h in ignore_subnets
	    || c$id$resp_h in ignore_subnets )
		return;

	local state = ( c?$conn && c$conn?$conn_state ) ? c$conn$conn_state : "";
	pending_conns += Connection($uid=c$uid, $orig_h=c$id$orig_h,
	    $orig_p=c$id$orig_p, $resp_h=c$id$resp_h, $resp_p=c$id$resp_p,
	    $proto=ip_proto(c), $ts=c$start_time, $duration=interval_to_double(
	    c$duration), $orig_pkts=num_pkts(c$orig), $resp_pkts=num_pkts(
	    c$resp), $orig_bytes=c$orig$size, $resp_bytes=c$resp$size,
	    $orig_ip_bytes=ip_bytes(c$orig), $resp_ip_bytes=ip_bytes(c$resp),
	    $history=c?$history ? c$history : "", $conn_state=state,
	    $service=join_string_set(c$service, ","));
	local last = pending_conns[|pending_conns| - 1];
	pending_conns_text += 1200 + |last$history| + |last$conn_state| + |last$service|;
	if ( |pending_conns| >= batch_size
	    || |pending_conns| >= max_batch
	    || pending_conns_text + 2048 >= max_batch_text )
		flush();
	else
		schedule_flush();
	}

function verdicts_received(n: count)
	{
	if ( ! score_traces || ! reading_traces() )
		return;
	outstanding = n > outstanding ? 0 : outstanding - n;
	if ( trace_done && outstanding == 0 )
		terminate();
	}

event DPack::verdicts(batch: vector of Verdict)
	{
	local now = current_time();
	for ( i in batch )
		{
		local v = batch[i];
		local id = conn_id($orig_h=v$orig_h, $orig_p=v$orig_p, $resp_h=v$resp_h,
		    $resp_p=v$resp_p);
		local info = Info($ts=network_time(), $uid=v$uid, $id=id, $score=v$score,
		    $threshold=v$threshold, $anomalous=v$anomalous,
		    $model=v$model, $latency=now - v$sent,
		    $scorer_latency=double_to_interval(v$scorer_latency),
		    $detector=v$detector);
		if ( v$explanation != "" )
			info$explanation = v$explanation;
		if ( v$community_id != "" )
			info$community_id = v$community_id;
		Log::write(DPack::LOG, info);

		# "guarded:": the scorer's day-one guard holds notices (see DPack::scorer_status)
		# detector "context": the host-context stage flagged the flow (its explanation names
		# the host.* features; the prefix score may be under its threshold)
		if ( v$anomalous && ! starts_with(v$model, "guarded:") )
			NOTICE([$note=Anomalous_Flow, $uid=v$uid, $id=id,
			    $msg=v$detector != "context" ? fmt("dpack: anomalous flow (score %.4g > threshold %.4g, model %s)",
			    v$score, v$threshold, v$model) : fmt("dpack: anomalous flow in its host context (score %.4g <= threshold %.4g, model %s)",
			    v$score, v$threshold, v$model), $sub=v$explanation,
			    $identifier=cat(v$orig_h, v$resp_h, v$resp_p),
			    $suppress_for=notice_suppression]);
		}
	verdicts_received(|batch|);
	}

event DPack::connection_verdicts(batch: vector of ConnectionVerdict)
	{
	local now = current_time();
	for ( i in batch )
		{
		local v = batch[i];
		local id = conn_id($orig_h=v$orig_h, $orig_p=v$orig_p, $resp_h=v$resp_h,
		    $resp_p=v$resp_p);
		local info = Info($ts=network_time(), $uid=v$uid, $id=id, $score=v$score,
		    $threshold=v$threshold, $anomalous=v$anomalous,
		    $model=v$model, $latency=now - v$sent,
		    $scorer_latency=double_to_interval(v$scorer_latency),
		    $detector=v$detector);
		if ( v$category != "" )
			info$category = v$category;
		if ( v$community_id != "" )
			info$community_id = v$community_id;
		Log::write(DPack::LOG, info);

		if ( v$anomalous )
			NOTICE([$note=Anomalous_Connection, $uid=v$uid, $id=id, $msg=fmt("dpack: anomalous connection (%s score %.4g > threshold %.4g, model %s)",
			    v$detector, v$score, v$threshold, v$model),
			    $sub=v$category == "" ? "" : fmt(
			    "category=%s confidence=%.2f", v$category,
			    v$confidence), $identifier=cat(v$orig_h, v$resp_h,
			    v$resp_p, v$category),
			    $suppress_for=notice_suppression]);
		}
	}

event DPack::scorer_status(kind: string, msg: string)
	{
	# model_drift: "SERVICE: what drifted"; one notice per service per suppression interval
	if ( kind == "model_drift" )
		{
		local service = split_string1(msg, /: /)[0];
		NOTICE([$note=Model_Drift, $msg=fmt("dpack: %s", msg), $sub=service,
		    $identifier=service, $suppress_for=notice_suppression]);
		}
	else if ( kind == "guard_on" )
		Reporter::warning(fmt("dpack: day-one guard: %s", msg));
	else if ( kind == "guard_off" )
		Reporter::info(fmt("dpack: day-one guard lifted: %s", msg));
	}

event DPack::scorer_refused(reason: string)
	{
	if ( reason in refusals_reported )
		return;
	add refusals_reported[reason];
	Reporter::error(fmt("dpack: the scorer refused this node's samples: %s",
	    reason));
	}

# --- zeek -r with a scorer (score_traces) -------------------------------------------------------

function scorer_connected()
	{
	if ( score_traces && reading_traces() && is_processing_suspended() )
		continue_processing();
	}

function scorer_lost()
	{
	if ( trace_done && outstanding > 0 )
		{
		Reporter::warning(fmt("dpack: the scorer went away with %d verdict(s) outstanding; terminating",
		    outstanding));
		terminate();
		}
	}

@if ( Version::at_least("8.0") )
event Cluster::websocket_client_added(info: Cluster::EndpointInfo,
    subscriptions: string_vec)
	{
	scorer_connected();
	}
@endif

event Broker::peer_added(endpoint: Broker::EndpointInfo, msg: string)
	{
	scorer_connected();
	}

@if ( Version::at_least("8.0") )
event Cluster::websocket_client_lost(info: Cluster::EndpointInfo, code: count,
    reason: string)
	{
	scorer_lost();
	}
@endif

event Broker::peer_lost(endpoint: Broker::EndpointInfo, msg: string)
	{
	scorer_lost();
	}

event Pcap::file_done(path: string)
	{
	if ( ! score_traces )
		return;
	local left: vector of connection = vector();
	for ( _, c in trace_collecting )
		left += c;
	for ( i in left )
		emit(left[i]);
	flush();
	trace_done = T;
	if ( outstanding == 0 )
		terminate();
	}

# ------------------------------------------------------------------------------------------------

event zeek_init() &priority=5
	{
	Log::create_stream(DPack::LOG, [$columns=Info, $ev=log_dpack, $path="dpack",
	    $policy=log_policy]);
	if ( Cluster::is_enabled() )
		{
		node = Cluster::node;
		replies = Cluster::node_topic(Cluster::node);
		}
	local i = 0;
	while ( i < scorer_shards )
		{
		pending += vector();
		pending_text += 0;
		++i;
		}

	if ( capture_bytes < packet_bytes + 14 )
		Reporter::warning(fmt("dpack: DPack::capture_bytes=%d cannot hold %d bytes after a link header",
		    capture_bytes, packet_bytes));

	if ( Cluster::is_enabled() || ( reading_traces() && ! score_traces ) )
		return;

@if ( Version::at_least("7.1") )
	Cluster::subscribe(verdict_topic);
@else
	Broker::subscribe(verdict_topic);
@endif
	if ( listen_websocket )
		{
@if ( Version::at_least("8.0") )
		Cluster::listen_websocket(Cluster::WebSocketServerOptions(
		    $listen_addr=listen_address, $listen_port=listen_port));
@else
		Broker::listen_websocket(cat(listen_address), listen_port);
@endif
		}
	if ( listen_broker )
		Broker::listen(cat(listen_address), broker_port);

	if ( reading_traces() )
		suspend_processing();
	}

event zeek_done()
	{
	flush();
	}
