// SPDX-License-Identifier: GPL-2.0
/* Per-agent network egress allowlist (cgroup/connect4, connect6, sendmsg4, sendmsg6),
 * traffic accounting (cgroup_skb ingress/egress) and syscall counting (raw_syscalls/sys_enter,
 * only for the cgroups in nc_monitored).
 *
 * Attached to each networked agent's cgroup v2 directory. A connect()/sendmsg() from a cgroup
 * that nanoclaw manages (nc_agents) is allowed only if (cgroup, proto, port, address) matches
 * an entry of the LPM trie (port 0 = any port); anything else fails with EPERM and is reported
 * on the nc_denials ring buffer. IPv4-mapped IPv6 destinations are checked as IPv4. Maps are
 * pinned by name under /sys/fs/bpf/nanoclaw so a restarted supervisor finds the same state. */
#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_core_read.h>

#include "kernel.h"
#include "nanoclaw.h"

#ifndef AF_INET
#define AF_INET 2
#endif
#ifndef AF_INET6
#define AF_INET6 10
#endif

char LICENSE[] SEC("license") = "GPL";

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, NC_MAX_AGENTS);
	__type(key, __u64);   /* cgroup id */
	__type(value, __u32); /* reserved flags */
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} nc_agents SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, NC_MAX_RULES);
	__type(key, struct nc_key4);
	__type(value, __u32); /* connects/datagrams this rule allowed */
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} nc_allow4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, NC_MAX_RULES);
	__type(key, struct nc_key6);
	__type(value, __u32); /* connects/datagrams this rule allowed */
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} nc_allow6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, NC_MAX_AGENTS);
	__type(key, __u64); /* cgroup id */
	__type(value, struct nc_traffic);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} nc_traffic SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 64 * 1024);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} nc_denials SEC(".maps");

static __always_inline void report(__u64 cg, __u32 family, __u16 port, __u8 proto, __u8 op,
				   const __u8 *addr, int len)
{
	struct nc_denial *d = bpf_ringbuf_reserve(&nc_denials, sizeof(*d), 0);
	if (!d)
		return; /* full: the supervisor counts what it receives; enforcement is unaffected */
	d->cgid = cg;
	d->family = family;
	d->port = port;
	d->proto = proto;
	d->op = op;
	__builtin_memset(d->addr, 0, sizeof(d->addr));
	for (int i = 0; i < 16 && i < len; i++)
		d->addr[i] = addr[i];
	bpf_ringbuf_submit(d, 0);
}

static __always_inline int allowed4(__u64 cg, __u16 port, __u8 proto, __u32 addr_be)
{
	struct nc_key4 k = {
		.prefixlen = NC_KEY_FIXED_BITS + 32,
		.cgid = cg,
		.port = port,
		.proto = proto,
	};
	__builtin_memcpy(k.addr, &addr_be, 4);
	__u32 *uses = bpf_map_lookup_elem(&nc_allow4, &k);
	if (!uses) {
		k.port = 0;
		uses = bpf_map_lookup_elem(&nc_allow4, &k);
	}
	if (!uses)
		return 0;
	__sync_fetch_and_add(uses, 1); /* the rule's use count (`nanoclaw sim` reports unused grants) */
	return 1;
}

static __always_inline int check4(struct bpf_sock_addr *ctx, __u8 op)
{
	__u64 cg = bpf_get_current_cgroup_id();
	if (!bpf_map_lookup_elem(&nc_agents, &cg))
		return 1; /* not an agent of ours */
	__u16 port = (__u16)ctx->user_port;
	__u8 proto = (__u8)ctx->protocol;
	__u32 addr = ctx->user_ip4;
	if (allowed4(cg, port, proto, addr))
		return 1;
	report(cg, AF_INET, port, proto, op, (const __u8 *)&addr, 4);
	return 0;
}

static __always_inline int check6(struct bpf_sock_addr *ctx, __u8 op)
{
	__u64 cg = bpf_get_current_cgroup_id();
	if (!bpf_map_lookup_elem(&nc_agents, &cg))
		return 1;
	__u16 port = (__u16)ctx->user_port;
	__u8 proto = (__u8)ctx->protocol;
	__u32 a[4];
	a[0] = ctx->user_ip6[0];
	a[1] = ctx->user_ip6[1];
	a[2] = ctx->user_ip6[2];
	a[3] = ctx->user_ip6[3];
	/* ::ffff:a.b.c.d is IPv4 on the wire: judge it by the IPv4 rules. */
	if (a[0] == 0 && a[1] == 0 && a[2] == bpf_htonl(0x0000ffff)) {
		if (allowed4(cg, port, proto, a[3]))
			return 1;
		report(cg, AF_INET, port, proto, op, (const __u8 *)&a[3], 4);
		return 0;
	}
	struct nc_key6 k = {
		.prefixlen = NC_KEY_FIXED_BITS + 128,
		.cgid = cg,
		.port = port,
		.proto = proto,
	};
	__builtin_memcpy(k.addr, a, 16);
	__u32 *uses = bpf_map_lookup_elem(&nc_allow6, &k);
	if (!uses) {
		k.port = 0;
		uses = bpf_map_lookup_elem(&nc_allow6, &k);
	}
	if (uses) {
		__sync_fetch_and_add(uses, 1);
		return 1;
	}
	report(cg, AF_INET6, port, proto, op, (const __u8 *)a, 16);
	return 0;
}

SEC("cgroup/connect4")
int nc_connect4(struct bpf_sock_addr *ctx)
{
	return check4(ctx, NC_OP_CONNECT);
}

SEC("cgroup/connect6")
int nc_connect6(struct bpf_sock_addr *ctx)
{
	return check6(ctx, NC_OP_CONNECT);
}

SEC("cgroup/sendmsg4")
int nc_sendmsg4(struct bpf_sock_addr *ctx)
{
	return check4(ctx, NC_OP_SENDMSG);
}

SEC("cgroup/sendmsg6")
int nc_sendmsg6(struct bpf_sock_addr *ctx)
{
	return check6(ctx, NC_OP_SENDMSG);
}

/* Accounting only: never drops a packet. The supervisor creates each agent's entry. */
SEC("cgroup_skb/ingress")
int nc_rx(struct __sk_buff *skb)
{
	__u64 cg = bpf_skb_cgroup_id(skb);
	struct nc_traffic *t = bpf_map_lookup_elem(&nc_traffic, &cg);
	if (t) {
		__sync_fetch_and_add(&t->rx_bytes, skb->len);
		__sync_fetch_and_add(&t->rx_packets, 1);
	}
	return 1;
}

SEC("cgroup_skb/egress")
int nc_tx(struct __sk_buff *skb)
{
	__u64 cg = bpf_skb_cgroup_id(skb);
	struct nc_traffic *t = bpf_map_lookup_elem(&nc_traffic, &cg);
	if (t) {
		__sync_fetch_and_add(&t->tx_bytes, skb->len);
		__sync_fetch_and_add(&t->tx_packets, 1);
	}
	return 1;
}

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, NC_MAX_AGENTS);
	__type(key, __u64); /* cgroup id */
	__type(value, __u32);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} nc_monitored SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, NC_MAX_SYSCALL_KEYS);
	__type(key, struct nc_sys_key);
	__type(value, __u64);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} nc_syscalls SEC(".maps");

/* Runs for every syscall on the machine: one hash lookup decides it is not ours. A raw
 * tracepoint: no perf record is built, the syscall number is args[1]. The cgroup is watched
 * from before the agent exists; only tasks with no_new_privs count, which in an agent's
 * cgroup means the agent (the sandbox init's set-up before the agent's exec does not). */
SEC("raw_tracepoint/sys_enter")
int nc_sys_enter(struct bpf_raw_tracepoint_args *ctx)
{
	__u64 cg = bpf_get_current_cgroup_id();
	if (!bpf_map_lookup_elem(&nc_monitored, &cg))
		return 0;
	struct task_struct *t = (struct task_struct *)bpf_get_current_task();
	if (!(BPF_CORE_READ(t, atomic_flags) & 1))
		return 0;
	struct nc_sys_key k = { .cgid = cg, .nr = (__u32)ctx->args[1] };
	__u64 *v = bpf_map_lookup_elem(&nc_syscalls, &k);
	if (v) {
		__sync_fetch_and_add(v, 1);
	} else {
		__u64 one = 1;
		bpf_map_update_elem(&nc_syscalls, &k, &one, BPF_NOEXIST);
	}
	return 0;
}
