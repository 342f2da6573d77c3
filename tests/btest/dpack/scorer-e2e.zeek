# @TEST-DOC: Zeek (8.0+) and dpack serve side by side: every connection of the trace gets a dpack.log line and the attacks raise notices.
# @TEST-REQUIRES: zeek -b -e 'exit(Version::at_least("8.0") ? 0 : 1)'
# @TEST-REQUIRES: which dpack
# @TEST-PORT: DPACK_PORT
# @TEST-EXEC: btest-bg-run scorer "dpack serve --url ws://127.0.0.1:${DPACK_PORT%/tcp}/v1/messages/json --alerts alerts.jsonl --metrics-port 0"
# @TEST-EXEC: zeek -b -C -r $TRACES/mixed.pcap $PACKAGE %INPUT
# @TEST-EXEC: btest-bg-wait -k 5
# @TEST-EXEC: zeek-cut orig_h resp_p < dpack.log | sort > dpack.cut
# @TEST-EXEC: btest-diff dpack.cut
# @TEST-EXEC: zeek-cut note id.orig_h < notice.log | sort > notice.cut
# @TEST-EXEC: btest-diff notice.cut

redef exit_only_after_terminate = T;
redef DPack::listen_port = to_port(getenv("DPACK_PORT"));

global expected = 4;
global seen = 0;

event zeek_init()
	{
	suspend_processing();
	schedule 30sec { give_up() };
	}

event give_up()
	{
	terminate();
	}

event Cluster::websocket_client_added(info: Cluster::EndpointInfo, subscriptions: string_vec)
	{
	continue_processing();
	}

event DPack::log_dpack(rec: DPack::Info)
	{
	if ( ++seen == expected )
		terminate();
	}
