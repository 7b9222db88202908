// SPDX-License-Identifier: GPL-2.0-only
/*
 * neighbpf forward stage: forwards IPv4 packets towards directly connected
 * hosts with the MACs that neighbpf mirrors from the kernel's neighbor
 * table, and passes everything else to the kernel.
 *
 * Compiled by bcc (neighbpf/xdp.py) with -I bpf/ and
 * -DNEIGHBPF_PIN_DIR="<dir>". The maps are the pins that
 * PinnedMaps.open(create=True) made in that directory, so the daemon's
 * writes are what this program reads.
 *
 * Helper return codes that matter:
 *   - Map lookups return NULL for a missing key. A missing route or
 *     neighbor is a miss or a pass, never a drop.
 *   - bpf_check_mtu() returns BPF_MTU_CHK_RET_SUCCESS when the frame fits
 *     the egress MTU. Anything else is passed, so that the kernel sends
 *     ICMP "fragmentation needed" or fragments.
 *   - bpf_redirect() only records the egress ifindex and returns
 *     XDP_REDIRECT, or XDP_ABORTED for invalid flags. It is called before
 *     the headers are rewritten, so a failure leaves an unmodified frame
 *     for XDP_PASS. The transmit itself happens after the program returns
 *     (xdp_do_redirect()). A frame it cannot send is dropped by the kernel
 *     and cannot be counted here, but the xdp:xdp_redirect_err tracepoint
 *     shows such drops.
 */
#include <uapi/linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>

#include "neighbpf.h"

#ifndef NEIGHBPF_PIN_DIR
#define NEIGHBPF_PIN_DIR NEIGHBPF_PIN_DIR_DEFAULT
#endif

/*
 * Maps. Every one is a pin that already exists, so bcc opens it and the
 * max_entries below are not used: sizing and the behaviour when full are
 * documented per map in neighbpf.h.
 */
BPF_TABLE_PINNED("hash", struct neighbpf_neigh_key, struct neighbpf_neigh_value,
		 neigh4, 1024, NEIGHBPF_PIN_DIR "/" NEIGHBPF_PIN_NEIGH4);
BPF_TABLE_PINNED("lpm_trie", struct neighbpf_route_key, struct neighbpf_route_value,
		 routes4, NEIGHBPF_ROUTES4_MAX_ENTRIES, NEIGHBPF_PIN_DIR "/" NEIGHBPF_PIN_ROUTES4,
		 BPF_F_NO_PREALLOC);
BPF_TABLE_PINNED("hash", __u32, struct neighbpf_iface_value,
		 ifaces, NEIGHBPF_IFACES_MAX_ENTRIES, NEIGHBPF_PIN_DIR "/" NEIGHBPF_PIN_IFACES);
BPF_TABLE_PINNED("percpu_array", __u32, __u64,
		 xdp_stats, NEIGHBPF_XDP_STATS_MAX_ENTRIES, NEIGHBPF_PIN_DIR "/" NEIGHBPF_PIN_XDP_STATS);

/* Small helpers. */

static __always_inline void neighbpf_count(__u32 stat)
{
	__u64 *counter = xdp_stats.lookup(&stat);

	/* Per-CPU slot: no other CPU writes it, so no atomic is needed. */
	if (counter)
		*counter += 1;
}

static __always_inline int neighbpf_pass(__u32 stat)
{
	neighbpf_count(stat);
	return XDP_PASS;
}

static __always_inline int neighbpf_mac_equal(const __u8 *a, const __u8 *b)
{
	return a[0] == b[0] && a[1] == b[1] && a[2] == b[2] &&
	       a[3] == b[3] && a[4] == b[4] && a[5] == b[5];
}

/*
 * Decrement the TTL and patch the header checksum incrementally
 * (RFC 1624, eqn. 3), as the kernel's ip_decrease_ttl() in
 * include/net/ip.h does: the TTL is the high byte of its 16-bit word, so
 * the one's complement sum grows by htons(0x0100).
 */
static __always_inline void neighbpf_decrease_ttl(struct iphdr *iph)
{
	__u32 check = (__u32)iph->check;

	check += (__u32)htons(0x0100);
	iph->check = (__sum16)(check + (check >= 0xFFFF));
	iph->ttl--;
}

/* Core: decide one frame. */

static __always_inline int neighbpf_forward_core(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *iph;
	__u32 ingress_ifindex = ctx->ingress_ifindex;
	__u32 egress_ifindex;
	__u32 mtu_len = 0;
	struct neighbpf_iface_value *ingress;
	struct neighbpf_iface_value *egress;
	struct neighbpf_route_key route_key = {};
	struct neighbpf_route_value *route;
	struct neighbpf_neigh_key neigh_key = {};
	struct neighbpf_neigh_value *neigh;

	/* Parse: IPv4 without options in a frame sent to this interface's MAC. */
	if ((void *)(eth + 1) > data_end)
		return neighbpf_pass(NEIGHBPF_STAT_PASS);
	if (eth->h_proto != htons(ETH_P_IP))
		return neighbpf_pass(NEIGHBPF_STAT_PASS);
	ingress = ifaces.lookup(&ingress_ifindex);
	if (!ingress || !neighbpf_mac_equal(eth->h_dest, ingress->lladdr))
		return neighbpf_pass(NEIGHBPF_STAT_PASS);

	iph = (void *)(eth + 1);
	if ((void *)(iph + 1) > data_end)
		return neighbpf_pass(NEIGHBPF_STAT_PASS);
	/* Options (IHL > 5) need the kernel's ip_forward_options(). */
	if (iph->version != 4 || iph->ihl != 5)
		return neighbpf_pass(NEIGHBPF_STAT_PASS);
	/* The kernel sends ICMP time exceeded for these. */
	if (iph->ttl <= 1)
		return neighbpf_pass(NEIGHBPF_STAT_PASS);

	/* Route: a connected prefix makes the destination its own next hop. */
	route_key.prefixlen = 32;
	route_key.ip4 = iph->daddr;
	route = routes4.lookup(&route_key);
	if (!route)
		return neighbpf_pass(NEIGHBPF_STAT_PASS);
	egress_ifindex = route->ifindex;
	if (egress_ifindex == ingress_ifindex)
		return neighbpf_pass(NEIGHBPF_STAT_PASS);

	/* Neighbor: only a NUD_VALID entry has a MAC the kernel would use. */
	neigh_key.ifindex = egress_ifindex;
	neigh_key.ip4 = iph->daddr;
	neigh = neigh4.lookup(&neigh_key);
	if (!neigh || !(neigh->nud_state & NEIGHBPF_NUD_VALID))
		return neighbpf_pass(NEIGHBPF_STAT_MISS);

	egress = ifaces.lookup(&egress_ifindex);
	if (!egress)
		return neighbpf_pass(NEIGHBPF_STAT_ERROR);
	if (bpf_check_mtu(ctx, egress_ifindex, &mtu_len, 0, 0) != BPF_MTU_CHK_RET_SUCCESS)
		return neighbpf_pass(NEIGHBPF_STAT_PASS);
	if (bpf_redirect(egress_ifindex, 0) != XDP_REDIRECT)
		return neighbpf_pass(NEIGHBPF_STAT_ERROR);

	/* Rewrite and send. */
	__builtin_memcpy(eth->h_dest, neigh->lladdr, ETH_ALEN);
	__builtin_memcpy(eth->h_source, egress->lladdr, ETH_ALEN);
	neighbpf_decrease_ttl(iph);
	neighbpf_count(NEIGHBPF_STAT_HIT);
	return XDP_REDIRECT;
}

/* Entry point, loaded by neighbpf/xdp.py as "neighbpf_forward". */
int neighbpf_forward(struct xdp_md *ctx)
{
	return neighbpf_forward_core(ctx);
}
