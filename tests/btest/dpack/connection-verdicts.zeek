# @TEST-DOC: Connection verdicts become dpack.log entries with detector and category; anomalous ones raise DPack::Anomalous_Connection.
# @TEST-REQUIRES: which zeek
# @TEST-EXEC: zeek -b $PACKAGE %INPUT
# @TEST-EXEC: zeek-cut uid id.resp_p anomalous detector category < dpack.log > dpack.cut
# @TEST-EXEC: btest-diff dpack.cut
# @TEST-EXEC: zeek-cut note uid id.resp_p msg sub < notice.log > notice.cut
# @TEST-EXEC: btest-diff notice.cut

redef DPack::listen_websocket = F;

event zeek_init() &priority=-10
	{
	local bad = DPack::ConnectionVerdict($uid="CScan1", $orig_h=192.0.2.66,
	    $orig_p=55400/tcp, $resp_h=198.51.100.20, $resp_p=1723/tcp,
	    $detector="records", $score=2.5, $threshold=0.15, $anomalous=T,
	    $category="nmap_syn", $confidence=0.97,
	    $model="records-ae@0e47b6e663d5+classifier@aa11bb22cc33",
	    $community_id="1:xyz=", $sent=double_to_time(1700000000.0),
	    $scorer_latency=0.001);
	local good = DPack::ConnectionVerdict($uid="CWeb2", $orig_h=192.0.2.11,
	    $orig_p=40000/tcp, $resp_h=198.51.100.20, $resp_p=80/tcp,
	    $detector="records", $score=0.01, $threshold=0.15, $anomalous=F,
	    $category="benign", $confidence=0.99,
	    $model="records-ae@0e47b6e663d5+classifier@aa11bb22cc33",
	    $community_id="", $sent=double_to_time(1700000000.0),
	    $scorer_latency=0.001);
	event DPack::connection_verdicts(vector(bad, good));
	}
