# @TEST-DOC: zeek -r with dpack serve attached (DPack::score_traces): every connection of the trace gets one verdict in dpack.log, the attacks raise notices, and Zeek ends once the verdicts are in.
# @TEST-REQUIRES: which dpack
# @TEST-PORT: DPACK_PORT
# @TEST-EXEC: btest-bg-run scorer "dpack serve --url ws://127.0.0.1:${DPACK_PORT%/tcp}/v1/messages/json --alerts alerts.jsonl --metrics-port 0"
# @TEST-EXEC: timeout 120 zeek -b -C -r $TRACES/mixed.pcap $PACKAGE %INPUT
# @TEST-EXEC: btest-bg-wait -k 5
# @TEST-EXEC: zeek-cut id.orig_h id.resp_p anomalous < dpack.log | sort > dpack.cut
# @TEST-EXEC: btest-diff dpack.cut
# @TEST-EXEC: zeek-cut note id.orig_h < notice.log | sort > notice.cut
# @TEST-EXEC: btest-diff notice.cut

redef DPack::score_traces = T;
redef DPack::listen_port = to_port(getenv("DPACK_PORT"));
