# @TEST-DOC: zeek -r with Zeek's default scripts and dpack loaded ends with the trace (nothing listens for a scorer unless DPack::score_traces is set).
# @TEST-REQUIRES: which zeek
# @TEST-EXEC: timeout 120 zeek -C -r $TRACES/mixed.pcap $PACKAGE %INPUT
# @TEST-EXEC: zeek-cut id.orig_h id.resp_p < conn.log | sort > conn.cut
# @TEST-EXEC: btest-diff conn.cut
# @TEST-EXEC: test ! -e dpack.log

event zeek_init()
	{
	print DPack::score_traces;
	}
