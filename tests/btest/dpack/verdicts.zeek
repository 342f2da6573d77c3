# @TEST-DOC: Verdicts from the scorer become dpack.log entries; anomalous ones (by the prefix or the host context) raise DPack::Anomalous_Flow.
# @TEST-REQUIRES: which zeek
# @TEST-EXEC: zeek -b $PACKAGE %INPUT
# @TEST-EXEC: zeek-cut uid id.orig_h id.resp_p anomalous model detector explanation < dpack.log > dpack.cut
# @TEST-EXEC: btest-diff dpack.cut
# @TEST-EXEC: zeek-cut note uid id.orig_h id.resp_p msg sub < notice.log > notice.cut
# @TEST-EXEC: btest-diff notice.cut

redef DPack::listen_websocket = F;

event zeek_init() &priority=-10
	{
	local bad = DPack::Verdict($uid="CAbc123xyz", $orig_h=192.0.2.10,
	    $orig_p=40000/tcp, $resp_h=198.51.100.20, $resp_p=22/tcp,
	    $score=0.5, $threshold=0.1, $anomalous=T,
	    $model="dpack-default@03e83604a44e",
	    $explanation="p2.tcp.flags,p3.payload[4]", $community_id="1:abc=",
	    $sent=double_to_time(1700000000.0), $scorer_latency=0.002,
	    $detector="prefix");
	local good = DPack::Verdict($uid="CDef456", $orig_h=192.0.2.11,
	    $orig_p=5353/udp, $resp_h=198.51.100.53, $resp_p=53/udp,
	    $score=0.0001, $threshold=0.1, $anomalous=F,
	    $model="dpack-default@03e83604a44e", $explanation="",
	    $community_id="1:def=", $sent=double_to_time(1700000000.0),
	    $scorer_latency=0.002, $detector="prefix");
	# flagged by the host-context stage: the prefix score is under its threshold
	local context = DPack::Verdict($uid="CCtx789", $orig_h=192.0.2.12,
	    $orig_p=40001/tcp, $resp_h=198.51.100.20, $resp_p=22/tcp,
	    $score=0.05, $threshold=0.1, $anomalous=T,
	    $model="dpack-default@03e83604a44e",
	    $explanation="host.same_service_60s,host.new_flows_60s",
	    $community_id="1:ghi=", $sent=double_to_time(1700000000.0),
	    $scorer_latency=0.002, $detector="context");
	event DPack::verdicts(vector(bad, good, context));
	}
