//go:build ignore

// SPDX-License-Identifier: GPL-2.0-only
//
// steer_ingress runs at TC ingress of the gateway's LAN interfaces. It hands
// TCP segments for the intercepted destination ports to the dataplane's
// transparent listener with bpf_sk_assign and marks them, so that a policy
// routing rule delivers them locally instead of forwarding them. It never
// parses TLS. It drops only what would otherwise slip past the policy:
// fragmented TCP to an intercepted port and, when asked, QUIC (UDP to an
// intercepted port, so that browsers fall back to TCP). Everything else it
// does not steer continues as before.

#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/udp.h>
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
	COUNTER_UNPARSED,	     // non-first fragment, or IPv6 headers not walked: forwarded
	COUNTER_NOT_FORWARDED,	     // routing would not forward it (the gateway's own
				     // address, unreachable, forwarding off): as usual
	COUNTER_NO_FLOW,	     // not a SYN and no socket: a flow from before the
				     // dataplane started, forwarded as it was
	COUNTER_FRAGMENT_DROPPED,    // fragmented TCP to an intercepted port: dropped
	COUNTER_QUIC_DROPPED,	     // UDP to an intercepted port with block_quic: dropped
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

// Non-zero: drop UDP to the intercepted ports. Set by the loader.
volatile const __u8 block_quic = 0;

// The IPv6 fragment header (RFC 8200, Section 4.5).
struct ipv6_frag {
	__u8 nexthdr;
	__u8 reserved;
	__be16 frag_off; // offset in 8-byte units << 3, flags in the low 3 bits
	__be32 id;
};

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

// forwarded reports whether the routing table would forward the packet. Only
// then is it the dataplane's business: the gateway's own addresses (its own
// services, or an attempt to use the dataplane as an open proxy to them), an
// unreachable destination, or forwarding turned off on the interface or for
// the family all mean the gateway would not pass the packet on by itself.
static __always_inline int forwarded(struct __sk_buff *skb, struct bpf_fib_lookup *fib)
{
	long rc;

	fib->l4_protocol = IPPROTO_TCP;
	fib->ifindex = skb->ingress_ifindex;
	rc = bpf_fib_lookup(skb, fib, sizeof(*fib), 0);
	// NO_NEIGH: a route exists, the next hop is just not resolved yet.
	return rc == BPF_FIB_LKUP_RET_SUCCESS || rc == BPF_FIB_LKUP_RET_NO_NEIGH;
}

// segment is what assign needs to know about a TCP segment.
struct segment {
	struct bpf_sock_tuple tuple;
	__u32 tuple_len;
	__u32 slot;
	void *iph; // network header, for the SYN-cookie check
	__u32 iph_len;
	struct tcphdr *tcp;
	struct bpf_fib_lookup fib;
};

// assign_listener gives a segment without a socket of its own to the
// dataplane's listener. Only a SYN starts a connection there. Any other
// segment is either the last ACK of a handshake the listener answered with a
// SYN cookie (its queue was full), which the listener must see, or part of a
// flow that began before the dataplane was listening: forwarding that one as
// before keeps it alive instead of having the listener reset it.
static __always_inline struct bpf_sock *assign_listener(struct __sk_buff *skb,
							 struct segment *seg)
{
	struct bpf_sock *sk;
	int syn = seg->tcp->syn && !seg->tcp->ack;

	if (syn && !forwarded(skb, &seg->fib)) {
		count(COUNTER_NOT_FORWARDED);
		return NULL;
	}
	sk = bpf_map_lookup_elem(&listeners, &seg->slot);
	if (!sk) {
		// No dataplane listening: forwarding the segment is the
		// fail-open behaviour operators ask for.
		count(COUNTER_NO_LISTENER);
		return NULL;
	}
	if (syn)
		return sk;
	if (bpf_tcp_check_syncookie(sk, seg->iph, seg->iph_len, seg->tcp,
				    sizeof(*seg->tcp)) == 0)
		return sk;
	bpf_sk_release(sk);
	count(COUNTER_NO_FLOW);
	return NULL;
}

// assign gives the segment to a socket and marks it. It returns the verdict.
// The socket of the flow itself comes first: once the listener has answered a
// SYN, the final ACK must reach the request socket, or the kernel answers the
// handshake with a reset.
static __always_inline int assign(struct __sk_buff *skb, struct segment *seg)
{
	struct bpf_sock *sk;
	enum counter counter = COUNTER_STEERED_ESTABLISHED;
	long err;

	sk = bpf_skc_lookup_tcp(skb, &seg->tuple, seg->tuple_len, BPF_F_CURRENT_NETNS, 0);
	if (sk && sk->state == BPF_TCP_LISTEN) {
		// A listener on the gateway that happens to match the port is not
		// the dataplane's; fall through to the dataplane's own.
		bpf_sk_release(sk);
		sk = NULL;
	}
	if (!sk) {
		counter = COUNTER_STEERED_NEW;
		sk = assign_listener(skb, seg);
		if (!sk)
			return TC_ACT_UNSPEC;
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

// udp_verdict drops QUIC to an intercepted port when block_quic is set:
// browsers then retry over TCP, where the policy applies.
static __always_inline int udp_verdict(struct udphdr *udp, void *data_end)
{
	if (!block_quic || (void *)(udp + 1) > data_end || !intercepted_port(udp->dest))
		return TC_ACT_UNSPEC;
	count(COUNTER_QUIC_DROPPED);
	return TC_ACT_SHOT;
}

static __always_inline int bypassed4(__be32 daddr)
{
	struct lpm_key4 key = { .prefixlen = 32 };

	__builtin_memcpy(key.addr, &daddr, sizeof(key.addr));
	return bpf_map_lookup_elem(&bypass4, &key) != NULL;
}

static __always_inline int bypassed6(struct in6_addr *daddr)
{
	struct lpm_key6 key = { .prefixlen = 128 };

	__builtin_memcpy(key.addr, daddr, sizeof(key.addr));
	return bpf_map_lookup_elem(&bypass6, &key) != NULL;
}

static __always_inline int steer_ipv4(struct __sk_buff *skb, void *data, void *data_end)
{
	struct iphdr *ip = data;
	struct segment seg = { .tuple_len = sizeof(seg.tuple.ipv4), .slot = LISTENER_IPV4 };
	struct tcphdr *tcp;
	__u32 ihl;

	if ((void *)(ip + 1) > data_end)
		return TC_ACT_UNSPEC;
	ihl = ip->ihl * 4;
	if (ihl < sizeof(*ip))
		return TC_ACT_UNSPEC;
	if (ip->protocol != IPPROTO_TCP && ip->protocol != IPPROTO_UDP)
		return TC_ACT_UNSPEC;
	// A non-first fragment carries no transport header: nothing to judge.
	if (ip->frag_off & bpf_htons(0x1fff)) {
		count(COUNTER_UNPARSED);
		return TC_ACT_UNSPEC;
	}
	if (bypassed4(ip->daddr)) {
		count(COUNTER_BYPASSED);
		return TC_ACT_UNSPEC;
	}
	// IPv4 options move the transport header; ihl covers them.
	if (ip->protocol == IPPROTO_UDP)
		return udp_verdict(data + ihl, data_end);

	tcp = data + ihl;
	if ((void *)(tcp + 1) > data_end)
		return TC_ACT_UNSPEC;
	if (!intercepted_port(tcp->dest)) {
		count(COUNTER_PASSED);
		return TC_ACT_UNSPEC;
	}
	// The first fragment of a TCP segment: the kernel reassembles only
	// after this hook, and a forwarded fragment would carry the connection
	// past the policy. TCP sets DF and never needs this, so it is dropped.
	if (ip->frag_off & bpf_htons(0x2000)) {
		count(COUNTER_FRAGMENT_DROPPED);
		return TC_ACT_SHOT;
	}

	seg.tuple.ipv4.saddr = ip->saddr;
	seg.tuple.ipv4.daddr = ip->daddr;
	seg.tuple.ipv4.sport = tcp->source;
	seg.tuple.ipv4.dport = tcp->dest;
	seg.iph = ip;
	seg.iph_len = sizeof(*ip);
	seg.tcp = tcp;
	seg.fib.family = AF_INET;
	seg.fib.ipv4_src = ip->saddr;
	seg.fib.ipv4_dst = ip->daddr;
	seg.fib.tot_len = bpf_ntohs(ip->tot_len);
	return assign(skb, &seg);
}

// ipv6_l4 is where skip_ipv6_ext found the upper-layer header.
struct ipv6_l4 {
	void *hdr;
	__u8 proto;
	__u8 fragment; // behind a fragment header with offset 0 (first fragment)
};

// skip_ipv6_ext walks the hop-by-hop, routing, destination options and
// fragment headers in front of the upper-layer header. It returns 0 and
// fills l4, or -1 when it cannot tell: a non-first fragment (no upper-layer
// header), a truncated header, or more headers than it walks.
static __always_inline int skip_ipv6_ext(struct ipv6hdr *ip6, void *data_end,
					 struct ipv6_l4 *l4)
{
	__u8 next = ip6->nexthdr;
	void *hdr = ip6 + 1;

	for (int i = 0; i < MAX_EXT_HEADERS; i++) {
		struct ipv6_opt_hdr *opt = hdr;
		struct ipv6_frag *frag = hdr;

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
			if ((void *)(frag + 1) > data_end || frag->frag_off & bpf_htons(0xfff8))
				return -1;
			l4->fragment = 1;
			next = frag->nexthdr;
			hdr = frag + 1;
			break;
		default:
			l4->hdr = hdr;
			l4->proto = next;
			return 0;
		}
	}
	return -1;
}

static __always_inline int steer_ipv6(struct __sk_buff *skb, void *data, void *data_end)
{
	struct ipv6hdr *ip6 = data;
	struct segment seg = { .tuple_len = sizeof(seg.tuple.ipv6), .slot = LISTENER_IPV6 };
	struct ipv6_l4 l4 = {};
	struct tcphdr *tcp;

	if ((void *)(ip6 + 1) > data_end)
		return TC_ACT_UNSPEC;
	if (skip_ipv6_ext(ip6, data_end, &l4) < 0) {
		// Forwarded and counted rather than guessed at.
		count(COUNTER_UNPARSED);
		return TC_ACT_UNSPEC;
	}
	if (l4.proto != IPPROTO_TCP && l4.proto != IPPROTO_UDP)
		return TC_ACT_UNSPEC;
	if (bypassed6(&ip6->daddr)) {
		count(COUNTER_BYPASSED);
		return TC_ACT_UNSPEC;
	}
	if (l4.proto == IPPROTO_UDP)
		return udp_verdict(l4.hdr, data_end);

	tcp = l4.hdr;
	if ((void *)(tcp + 1) > data_end)
		return TC_ACT_UNSPEC;
	if (!intercepted_port(tcp->dest)) {
		count(COUNTER_PASSED);
		return TC_ACT_UNSPEC;
	}
	// As for IPv4: a fragmented TCP segment would get past the policy.
	if (l4.fragment) {
		count(COUNTER_FRAGMENT_DROPPED);
		return TC_ACT_SHOT;
	}

	__builtin_memcpy(seg.tuple.ipv6.saddr, &ip6->saddr, sizeof(seg.tuple.ipv6.saddr));
	__builtin_memcpy(seg.tuple.ipv6.daddr, &ip6->daddr, sizeof(seg.tuple.ipv6.daddr));
	seg.tuple.ipv6.sport = tcp->source;
	seg.tuple.ipv6.dport = tcp->dest;
	seg.iph = ip6;
	seg.iph_len = sizeof(*ip6);
	seg.tcp = tcp;
	seg.fib.family = AF_INET6;
	__builtin_memcpy(seg.fib.ipv6_src, &ip6->saddr, sizeof(seg.fib.ipv6_src));
	__builtin_memcpy(seg.fib.ipv6_dst, &ip6->daddr, sizeof(seg.fib.ipv6_dst));
	seg.fib.tot_len = bpf_ntohs(ip6->payload_len) + sizeof(*ip6);
	return assign(skb, &seg);
}

// steer_ingress returns TC_ACT_UNSPEC (TCX_NEXT under TCX) for everything it
// leaves alone, so other programs on the interface still see those packets,
// TC_ACT_OK for segments it assigned and TC_ACT_SHOT for what it drops.
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
