# @TEST-DOC: Connections go to the scorer shard of their originator: the same host (an IPv6 /64) always to one shard, different hosts spread over all of them.
# @TEST-REQUIRES: which zeek
# @TEST-EXEC: zeek -b $PACKAGE %INPUT > output
# @TEST-EXEC: btest-diff output

redef DPack::listen_websocket = F;
redef DPack::scorer_shards = 4;

event zeek_init()
	{
	local seen: set[count] = set();
	local i = 0;
	while ( ++i < 200 )
		add seen[DPack::shard_of(count_to_v4_addr(167772160 + i))];
	print |seen| == 4;
	print DPack::shard_of(10.0.0.1) == DPack::shard_of(10.0.0.1);
	print DPack::shard_of([2001:db8:1:2::1]) == DPack::shard_of(
	    [2001:db8:1:2:ffff::9]);
	print DPack::shard_of(10.0.0.1) < 4 && DPack::shard_of([2001:db8::1]) < 4;
	}
