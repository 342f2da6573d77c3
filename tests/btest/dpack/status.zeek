# @TEST-DOC: Scorer status: model_drift raises DPack::Model_Drift; while the day-one guard holds, guarded verdicts are logged but raise no notice.
# @TEST-REQUIRES: which zeek
# @TEST-EXEC: zeek -b $PACKAGE %INPUT >zeek.out 2>&1
# @TEST-EXEC: sed 's/^.*line [0-9]*: //' zeek.out > reporter.out
# @TEST-EXEC: btest-diff reporter.out
# @TEST-EXEC: zeek-cut uid anomalous model < dpack.log > dpack.cut
# @TEST-EXEC: btest-diff dpack.cut
# @TEST-EXEC: zeek-cut note msg sub < notice.log > notice.cut
# @TEST-EXEC: btest-diff notice.cut

redef DPack::listen_websocket = F;

function verdict(uid: string, model: string): DPack::Verdict
	{
	return DPack::Verdict($uid=uid, $orig_h=192.0.2.10, $orig_p=40000/tcp,
	    $resp_h=198.51.100.20, $resp_p=22/tcp, $score=0.5, $threshold=0.1,
	    $anomalous=T, $model=model, $explanation="p2.absent",
	    $community_id="1:abc=", $sent=double_to_time(1700000000.0),
	    $scorer_latency=0.002, $detector="prefix");
	}

event zeek_init() &priority=-10
	{
	event DPack::scorer_status("guard_on",
	    "model dpack-default@x flags 87% of this site's originators");
	event DPack::verdicts(vector(verdict("CGuarded1", "guarded:dpack-default@x")));
	event DPack::scorer_status("guard_off",
	    "model dpack-default@x flags 3% of the originators now");
	event DPack::verdicts(vector(verdict("CFlagged2", "dpack-default@x")));
	event DPack::scorer_status("model_drift",
	    "udp/53: scores of unflagged flows drifted (PSI 0.61 > 0.25)");
	event DPack::scorer_status("model_drift",
	    "udp/53: scores of unflagged flows drifted (PSI 0.70 > 0.25)");
	}
