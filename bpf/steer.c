//go:build ignore

// SPDX-License-Identifier: GPL-2.0-only
//
// steer_ingress runs at TC ingress of the gateway's LAN interfaces. It hands
// TCP segments for the intercepted destination ports to the dataplane's
// transparent listener with bpf_sk_assign and marks them, so that a policy
// routing rule delivers them locally instead of forwarding them. It never
// parses TLS and never drops: anything it does not steer continues as before.

#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#ifndef AF_INET
#define AF_INET 2
#endif
#ifndef AF_INET6
#define AF_INET6 10
#endif

#define MAX_PORTS 64
// IPv6 extension headers walked before giving up on finding TCP.
#define MAX_EXT_HEADERS 4
#define MAX_BYPASS 1024

// Indexes into the counters map. The Go loader reads the names through the
// generated type, so the two sides cannot drift apart.
enum counter {
	COUNTER_STEERED_NEW,	     // assigned to the dataplane's listener
	COUNTER_STEERED_ESTABLISHED, // assigned to the flow's own socket
	COUNTER_PASSED,		     // not for an intercepted port: untouched
	COUNTER_BYPASSED,	     // destination in the bypass prefixes
	COUNTER_NO_LISTENER,	     // dataplane not running: forwarded (fail open)
	COUNTER_ASSIGN_ERROR,	     // bpf_sk_assign refused: forwarded
	COUNTER_UNPARSED,	     // fragment, or IPv6 headers not walked: forwarded
	COUNTER_LOCAL,		     // addressed to the gateway itself: delivered as usual
	COUNTER_MAX,
};

// Listener slots in the sockmap, one per address family.
enum listener_slot {
	LISTENER_IPV4,
	LISTENER_IPV6,
	LISTENER_MAX,
};

struct lpm_key4 {
	__u32 prefixlen;
	__u8 addr[4];
};

struct lpm_key6 {
	__u32 prefixlen;
	__u8 addr[16];
};

// The packet mark set on steered packets. The loader sets it before load; the
// policy routing rule it installs matches the same bits.
volatile const __u32 steer_mark = 0;

// Per-CPU packet counts, indexed by enum counter. Written here, summed by Go.
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, COUNTER_MAX);
	__type(key, enum counter);
	__type(value, __u64);
} counters SEC(".maps");

// Destination port (host byte order) -> 1 for each intercepted port. Written
// by the loader.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_PORTS);
	__type(key, __u16);
	__type(value, __u8);
} ports SEC(".maps");

// Listener slot -> the dataplane's listening socket. Written by the loader
// with the socket's fd; the kernel drops the entry when the socket closes.
struct {
	__uint(type, BPF_MAP_TYPE_SOCKMAP);
	__uint(max_entries, LISTENER_MAX);
	__type(key, __u32);
	__type(value, __u64);
} listeners SEC(".maps");

// Destination prefixes that are never steered. Written by the loader.
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, MAX_BYPASS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct lpm_key4);
	__type(value, __u8);
} bypass4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, MAX_BYPASS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct lpm_key6);
	__type(value, __u8);
} bypass6 SEC(".maps");

static __always_inline void count(enum counter which)
{
	__u64 *value = bpf_map_lookup_elem(&counters, &which);

	if (value)
		*value += 1;
}

static __always_inline int intercepted_port(__be16 dport)
{
	__u16 port = bpf_ntohs(dport);

	return bpf_map_lookup_elem(&ports, &port) != NULL;
}

// assign gives the segment to a socket and marks it. It returns the verdict.
// The socket of the flow itself comes first: once the listener has answered a
// SYN, the final ACK must reach the request socket, or the kernel answers the
// handshake with a reset. Only when the flow has no socket yet (a SYN) does
// the listener get the segment.
// to_gateway reports whether the routing table delivers the packet to the
// gateway itself rather than forwarding it. Such connections are the
// gateway's own services (or an attempt to use the dataplane as an open
// proxy towards them) and are left to the normal local delivery.
static __always_inline int to_gateway(struct __sk_buff *skb, struct bpf_fib_lookup *fib)
{
	fib->l4_protocol = IPPROTO_TCP;
	fib->ifindex = skb->ingress_ifindex;
	return bpf_fib_lookup(skb, fib, sizeof(*fib), 0) == BPF_FIB_LKUP_RET_NOT_FWDED;
}

static __always_inline int assign(struct __sk_buff *skb, struct bpf_sock_tuple *tuple,
				  __u32 tuple_len, __u32 slot, struct bpf_fib_lookup *fib)
{
	struct bpf_sock *sk;
	enum counter counter = COUNTER_STEERED_ESTABLISHED;
	long err;

	sk = bpf_skc_lookup_tcp(skb, tuple, tuple_len, BPF_F_CURRENT_NETNS, 0);
	if (sk && sk->state == BPF_TCP_LISTEN) {
		// A listener on the gateway that happens to match the port is not
		// the dataplane's; fall through to the dataplane's own.
		bpf_sk_release(sk);
		sk = NULL;
	}
	if (!sk) {
		// Only a new flow pays for the route lookup.
		if (to_gateway(skb, fib)) {
			count(COUNTER_LOCAL);
			return TC_ACT_UNSPEC;
		}
		counter = COUNTER_STEERED_NEW;
		sk = bpf_map_lookup_elem(&listeners, &slot);
		if (!sk) {
			// No dataplane listening: forwarding the segment is the
			// fail-open behaviour operators ask for.
			count(COUNTER_NO_LISTENER);
			return TC_ACT_UNSPEC;
		}
	}

	err = bpf_sk_assign(skb, sk, 0);
	bpf_sk_release(sk);
	if (err) {
		count(COUNTER_ASSIGN_ERROR);
		return TC_ACT_UNSPEC;
	}

	// Without the mark the routing decision would forward the segment and
	// the assignment would be lost; the rule for the mark makes it local.
	skb->mark |= steer_mark;
	count(counter);
	return TC_ACT_OK;
}

static __always_inline int steer_ipv4(struct __sk_buff *skb, void *data, void *data_end)
{
	struct iphdr *ip = data;
	struct bpf_sock_tuple tuple = {};
	struct lpm_key4 key = { .prefixlen = 32 };
	struct bpf_fib_lookup fib = {};
	struct tcphdr *tcp;
	__u32 ihl;

	if ((void *)(ip + 1) > data_end || ip->protocol != IPPROTO_TCP)
		return TC_ACT_UNSPEC;
	// A non-first fragment carries no TCP header; a first fragment would be
	// reassembled by the kernel only after this hook. Neither is steered.
	if (ip->frag_off & bpf_htons(0x3fff)) {
		count(COUNTER_UNPARSED);
		return TC_ACT_UNSPEC;
	}
	ihl = ip->ihl * 4;
	if (ihl < sizeof(*ip))
		return TC_ACT_UNSPEC;
	// IPv4 options move the TCP header; ihl covers them.
	tcp = data + ihl;
	if ((void *)(tcp + 1) > data_end)
		return TC_ACT_UNSPEC;

	if (!intercepted_port(tcp->dest)) {
		count(COUNTER_PASSED);
		return TC_ACT_UNSPEC;
	}
	__builtin_memcpy(key.addr, &ip->daddr, sizeof(key.addr));
	if (bpf_map_lookup_elem(&bypass4, &key)) {
		count(COUNTER_BYPASSED);
		return TC_ACT_UNSPEC;
	}

	tuple.ipv4.saddr = ip->saddr;
	tuple.ipv4.daddr = ip->daddr;
	tuple.ipv4.sport = tcp->source;
	tuple.ipv4.dport = tcp->dest;
	fib.family = AF_INET;
	fib.ipv4_src = ip->saddr;
	fib.ipv4_dst = ip->daddr;
	fib.tot_len = bpf_ntohs(ip->tot_len);
	return assign(skb, &tuple, sizeof(tuple.ipv4), LISTENER_IPV4, &fib);
}

// skip_ipv6_ext walks the hop-by-hop, routing and destination options
// headers in front of the upper-layer header. It returns the upper-layer
// protocol and sets *l4, or -1 when it cannot tell: a fragment header (only
// the first fragment has the TCP header, and reassembly comes after this
// hook), a truncated header, or more headers than it walks.
static __always_inline int skip_ipv6_ext(struct ipv6hdr *ip6, void *data_end, void **l4)
{
	__u8 next = ip6->nexthdr;
	void *hdr = ip6 + 1;

	for (int i = 0; i < MAX_EXT_HEADERS; i++) {
		struct ipv6_opt_hdr *opt = hdr;

		switch (next) {
		case IPPROTO_HOPOPTS:
		case IPPROTO_ROUTING:
		case IPPROTO_DSTOPTS:
			if ((void *)(opt + 1) > data_end)
				return -1;
			next = opt->nexthdr;
			hdr += (opt->hdrlen + 1) * 8;
			break;
		case IPPROTO_FRAGMENT:
			return -1;
		default:
			*l4 = hdr;
			return next;
		}
	}
	return -1;
}

static __always_inline int steer_ipv6(struct __sk_buff *skb, void *data, void *data_end)
{
	struct ipv6hdr *ip6 = data;
	struct bpf_sock_tuple tuple = {};
	struct lpm_key6 key = { .prefixlen = 128 };
	struct bpf_fib_lookup fib = {};
	struct tcphdr *tcp;
	void *l4 = NULL;
	int proto;

	if ((void *)(ip6 + 1) > data_end)
		return TC_ACT_UNSPEC;
	proto = skip_ipv6_ext(ip6, data_end, &l4);
	if (proto < 0) {
		// Forwarded and counted rather than guessed at.
		count(COUNTER_UNPARSED);
		return TC_ACT_UNSPEC;
	}
	if (proto != IPPROTO_TCP)
		return TC_ACT_UNSPEC;
	tcp = l4;
	if ((void *)(tcp + 1) > data_end)
		return TC_ACT_UNSPEC;

	if (!intercepted_port(tcp->dest)) {
		count(COUNTER_PASSED);
		return TC_ACT_UNSPEC;
	}
	__builtin_memcpy(key.addr, &ip6->daddr, sizeof(key.addr));
	if (bpf_map_lookup_elem(&bypass6, &key)) {
		count(COUNTER_BYPASSED);
		return TC_ACT_UNSPEC;
	}

	__builtin_memcpy(tuple.ipv6.saddr, &ip6->saddr, sizeof(tuple.ipv6.saddr));
	__builtin_memcpy(tuple.ipv6.daddr, &ip6->daddr, sizeof(tuple.ipv6.daddr));
	tuple.ipv6.sport = tcp->source;
	tuple.ipv6.dport = tcp->dest;
	fib.family = AF_INET6;
	__builtin_memcpy(fib.ipv6_src, &ip6->saddr, sizeof(fib.ipv6_src));
	__builtin_memcpy(fib.ipv6_dst, &ip6->daddr, sizeof(fib.ipv6_dst));
	fib.tot_len = bpf_ntohs(ip6->payload_len) + sizeof(*ip6);
	return assign(skb, &tuple, sizeof(tuple.ipv6), LISTENER_IPV6, &fib);
}

// steer_ingress returns TC_ACT_UNSPEC (TCX_NEXT under TCX) for everything it
// leaves alone, so other programs on the interface still see those packets,
// and TC_ACT_OK only for segments it assigned.
SEC("tc")
int steer_ingress(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > data_end)
		return TC_ACT_UNSPEC;

	switch (eth->h_proto) {
	case bpf_htons(ETH_P_IP):
		return steer_ipv4(skb, eth + 1, data_end);
	case bpf_htons(ETH_P_IPV6):
		return steer_ipv6(skb, eth + 1, data_end);
	default:
		return TC_ACT_UNSPEC;
	}
}

char _license[] SEC("license") = "GPL";
