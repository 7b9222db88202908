/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * neighbpf map ABI: the contract between the neighbpf daemon, which writes
 * the pinned maps, and every XDP program that reads them, whichever loader
 * (bcc, libbpf, xdp-loader) loads it.
 *
 * Include this header after <linux/types.h> (userspace) or from a bcc or
 * libbpf program. It defines no maps itself: a program declares them with
 * the names, types and layouts below and opens the pins that neighbpf made.
 *
 * Compatibility rule: a change of any struct layout, key meaning or map
 * type raises NEIGHBPF_ABI_VERSION. neighbpf rejects a pinned map whose
 * meta.abi_version, map type, key size or value size differs from its own.
 * Fields named "reserved" are written as zero and ignored by readers, so a
 * later version can give them a meaning without a layout change.
 */
#ifndef NEIGHBPF_H
#define NEIGHBPF_H

#define NEIGHBPF_ABI_VERSION 1

/* Pins live in one directory on bpffs, and each map has a fixed file name. */
#define NEIGHBPF_PIN_DIR_DEFAULT "/sys/fs/bpf/neighbpf"
#define NEIGHBPF_PIN_NEIGH4 "neigh4"
#define NEIGHBPF_PIN_ROUTES4 "routes4"
#define NEIGHBPF_PIN_IFACES "ifaces"
#define NEIGHBPF_PIN_META "meta"
#define NEIGHBPF_PIN_XDP_STATS "xdp_stats"

/*
 * The kernel's NUD_VALID set (include/net/neighbour.h, not exported to
 * UAPI): NUD_PERMANENT | NUD_NOARP | NUD_REACHABLE | NUD_PROBE | NUD_STALE |
 * NUD_DELAY. Only entries in one of these states carry a usable MAC.
 */
#define NEIGHBPF_NUD_VALID 0xde

/*
 * neigh4: BPF_MAP_TYPE_HASH, (egress ifindex, IPv4) -> MAC and NUD state.
 *
 * A copy of the kernel's IPv4 neighbor table, limited to entries in a
 * NUD_VALID state with a 6-byte MAC. Sizing: max_entries is set when the
 * map is created and defaults to the larger of 65536 and the kernel's
 * net.ipv4.neigh.default.gc_thresh3, rounded up to a power of two.
 * gc_thresh3 does not limit PERMANENT entries, hence the minimum. An
 * existing pin keeps its own size. When the map
 * is full, an insert of a new key fails with E2BIG. The daemon counts and
 * logs it, and entries already in the map stay correct. The XDP program
 * finds no entry for the missing key and passes the packet to the kernel.
 */
struct neighbpf_neigh_key {
	__u32 ifindex;
	__be32 ip4;		/* network byte order */
};

struct neighbpf_neigh_value {
	__u8 lladdr[6];
	__u16 nud_state;	/* NUD_* of the kernel entry, host byte order */
	__u32 ntf_flags;	/* NTF_* (ndm_flags), host byte order */
	__u32 reserved;
};

/*
 * routes4: BPF_MAP_TYPE_LPM_TRIE (BPF_F_NO_PREALLOC), connected IPv4
 * prefix -> egress ifindex.
 *
 * Contains the prefixes of the router's own interface addresses, so that a
 * destination inside one of them is its own next hop. Sizing:
 * NEIGHBPF_ROUTES4_MAX_ENTRIES prefixes. When full, an insert fails with
 * ENOSPC, and a packet whose destination matches no prefix is passed to
 * the kernel.
 */
#define NEIGHBPF_ROUTES4_MAX_ENTRIES 4096

struct neighbpf_route_key {
	__u32 prefixlen;	/* 0..32; LPM trie keys start with this field */
	__be32 ip4;		/* network byte order, host bits zero */
};

struct neighbpf_route_value {
	__u32 ifindex;
	__u32 reserved;
};

/*
 * ifaces: BPF_MAP_TYPE_HASH, ifindex -> the interface's own MAC. The
 * forward stage handles only frames sent to the ingress interface's MAC
 * and uses the egress interface's MAC as the new source MAC, so every
 * interface the stage is attached to, or forwards to, needs an entry.
 *
 * Sizing: NEIGHBPF_IFACES_MAX_ENTRIES interfaces. When full, an insert
 * fails with E2BIG. A packet towards an interface that is missing here is
 * counted as NEIGHBPF_STAT_ERROR and passed to the kernel.
 */
#define NEIGHBPF_IFACES_MAX_ENTRIES 4096

struct neighbpf_iface_value {
	__u8 lladdr[6];
	__u16 reserved;
	__u32 flags;		/* reserved for interface flags; written as zero */
};

/*
 * meta: BPF_MAP_TYPE_ARRAY of one entry (key __u32 0) that records the
 * ABI version of the maps in the same pin directory. It never fills.
 */
#define NEIGHBPF_META_MAX_ENTRIES 1

struct neighbpf_meta {
	__u32 abi_version;
	__u32 reserved[3];
};

/*
 * xdp_stats: BPF_MAP_TYPE_PERCPU_ARRAY of __u64 packet counters, indexed
 * by enum neighbpf_stat. Readers sum the per-CPU values. It never fills.
 */
enum neighbpf_stat {
	NEIGHBPF_STAT_HIT = 0,	/* MACs rewritten and redirected */
	NEIGHBPF_STAT_MISS = 1,	/* no NUD_VALID neighbor entry: passed to the kernel */
	NEIGHBPF_STAT_PASS = 2,	/* not for the fast path: not IPv4 to our MAC,
				 * TTL <= 1, IP options, no connected route,
				 * egress == ingress, larger than the egress MTU */
	NEIGHBPF_STAT_ERROR = 3,	/* egress MAC missing in ifaces or
					 * bpf_redirect() failed */
	NEIGHBPF_STAT_COUNT = 4,
};

#define NEIGHBPF_XDP_STATS_MAX_ENTRIES NEIGHBPF_STAT_COUNT

_Static_assert(sizeof(struct neighbpf_neigh_key) == 8, "neighbpf_neigh_key layout");
_Static_assert(sizeof(struct neighbpf_neigh_value) == 16, "neighbpf_neigh_value layout");
_Static_assert(sizeof(struct neighbpf_route_key) == 8, "neighbpf_route_key layout");
_Static_assert(sizeof(struct neighbpf_route_value) == 8, "neighbpf_route_value layout");
_Static_assert(sizeof(struct neighbpf_iface_value) == 12, "neighbpf_iface_value layout");
_Static_assert(sizeof(struct neighbpf_meta) == 16, "neighbpf_meta layout");

#endif /* NEIGHBPF_H */
