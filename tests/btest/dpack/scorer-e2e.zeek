# @TEST-DOC: zeek -r with dpack serve attached (DPack::score_traces): every connection of the trace gets one verdict in dpack.log, the attacks raise notices, and Zeek ends once the verdicts are in.
# @TEST-REQUIRES: which zeek
# @TEST-REQUIRES: which dpack
# @TEST-PORT: DPACK_PORT
# The day-one guard (on for the shipped model) would hold this short trace's notices in its warm-up: it
# has tests of its own (tests/test_watch.py, dpack/status.zeek); here the notices themselves are tested.
# @TEST-EXEC: btest-bg-run scorer "DPACK_SERVE_GUARD=off dpack serve --url ws://127.0.0.1:${DPACK_PORT%/tcp}/v1/messages/json --alerts alerts.jsonl --metrics-port 0"
# The scorer is stopped in the same command as Zeek ends, whatever Zeek's status: btest runs no further
# command of a test once one fails, and a scorer left running would join the next test's Zeek.
# @TEST-EXEC: bash -c 'timeout 120 zeek -b -C -r $TRACES/mixed.pcap $PACKAGE %INPUT; rc=$?; btest-bg-wait -k 5; exit $rc'
# @TEST-EXEC: zeek-cut id.orig_h id.resp_p anomalous < dpack.log | sort > dpack.cut
# @TEST-EXEC: btest-diff dpack.cut
# @TEST-EXEC: zeek-cut note id.orig_h < notice.log | sort > notice.cut
# @TEST-EXEC: btest-diff notice.cut

redef DPack::score_traces = T;
redef DPack::listen_port = to_port(getenv("DPACK_PORT"));
