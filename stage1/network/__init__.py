"""Pod networking building blocks: a bridge, veths and nftables on Linux, an alias and a pf anchor
on FreeBSD, and the /etc files every pod gets. Thin, synchronous, stateless: callers own lifecycle.

Modules: ``linux`` (netlink, one nft transaction per pod), ``freebsd`` (ifconfig(8),
pfctl(8)), ``ports`` (the forwarding record both share), ``etc`` (resolv.conf and hosts
contents), ``command`` (running a tool and translating its failure). Callers run these
functions through ``trio.to_thread``.
"""
