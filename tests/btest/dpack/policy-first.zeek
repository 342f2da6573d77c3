# @TEST-DOC: Under the "first" policy the first N packets are exported whatever they carry (the SYN-ACK too).
# @TEST-REQUIRES: which zeek
# @TEST-EXEC: zeek -b -C -r $TRACES/mixed.pcap $PACKAGE %INPUT | sort > output
# @TEST-EXEC: btest-diff output

redef DPack::listen_websocket = F;
redef DPack::policy = "first";
redef DPack::packets = 2;

hook DPack::publish_policy(hdr: DPack::BatchHeader, batch: vector of
    DPack::Sample)
	{
	for ( i in batch )
		{
		local s = batch[i];
		local lens: vector of count = vector();
		for ( j in s$pkts )
			lens += |decode_base64(s$pkts[j])|;
		print fmt("%s %s %s %s %s %d %s %s", hdr$policy, s$orig_h, s$resp_h, s$resp_p,
		    s$proto, |s$pkts|, s$is_orig, lens);
		}
	break;
	}
