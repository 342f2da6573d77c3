# @TEST-DOC: With DPack::export_connections, every finished connection's summary is published once.
# @TEST-REQUIRES: which zeek
# @TEST-EXEC: zeek -b -C -r $TRACES/mixed.pcap $PACKAGE %INPUT | sort > output
# @TEST-EXEC: btest-diff output

redef DPack::listen_websocket = F;
redef DPack::export_connections = T;

hook DPack::publish_policy(hdr: DPack::BatchHeader, batch: vector of
    DPack::Sample)
	{
	break;
	}

hook DPack::publish_connections_policy(hdr: DPack::BatchHeader, batch: vector of
    DPack::Connection)
	{
	for ( i in batch )
		{
		local c = batch[i];
		print fmt("%s %s %s %s %d %d %d %d %s %s", c$orig_h, c$resp_h, c$resp_p,
		    c$proto, c$orig_pkts, c$resp_pkts, c$orig_bytes,
		    c$resp_bytes, c$history, c$conn_state);
		}
	break;
	}
