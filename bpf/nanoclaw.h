/* Shared between the eBPF programs (C) and the supervisor (Rust, supervisor/src/bpf/). Every
 * struct here is mirrored by a #[repr(C)] Rust struct with the same layout; the Rust side
 * asserts the sizes in its unit tests. */
#ifndef NANOCLAW_H
#define NANOCLAW_H

#include <linux/types.h>

/* Upper bounds; maps are created with BPF_F_NO_PREALLOC where the kernel allows it, so memory
 * follows the number of agents and rules actually present, not these numbers. */
#define NC_MAX_AGENTS 256
#define NC_MAX_RULES 65536

/* Prefix bits before the address in the LPM keys: cgroup id (64) + port (16) + proto (8) +
 * pad (8). A rule for a.b.c.d/24 has prefixlen NC_KEY_FIXED_BITS + 24. */
#define NC_KEY_FIXED_BITS 96

/* Allow-rule keys. port and addr are in network byte order; port 0 means any port. */
struct nc_key4 {
	__u32 prefixlen;
	__u64 cgid;
	__u16 port;
	__u8 proto;
	__u8 pad;
	__u8 addr[4];
} __attribute__((packed));

struct nc_key6 {
	__u32 prefixlen;
	__u64 cgid;
	__u16 port;
	__u8 proto;
	__u8 pad;
	__u8 addr[16];
} __attribute__((packed));

/* One denied connect/sendmsg, sent to the supervisor through the nc_denials ring buffer. */
struct nc_denial {
	__u64 cgid;
	__u32 family; /* AF_INET or AF_INET6 */
	__u16 port;   /* network byte order */
	__u8 proto;   /* IPPROTO_TCP / IPPROTO_UDP */
	__u8 op;      /* NC_OP_* */
	__u8 addr[16];
};

/* Traffic of one agent (nc_traffic, keyed by cgroup id), updated atomically. */
struct nc_traffic {
	__u64 rx_bytes;
	__u64 rx_packets;
	__u64 tx_bytes;
	__u64 tx_packets;
};

/* Syscall counts of one agent (nc_syscalls). */
struct nc_sys_key {
	__u64 cgid;
	__u32 nr;
	__u32 pad;
};

/* The fields of the raw_syscalls/sys_enter tracepoint record (its format file). */
struct nc_sys_enter {
	__u64 common;
	__s64 id;
	__u64 args[6];
};

#define NC_MAX_SYSCALL_KEYS (NC_MAX_AGENTS * 128)

#define NC_OP_CONNECT 1
#define NC_OP_SENDMSG 2

/* BPF LSM (bpf/lsm.c): one entry per agent cgroup in nc_lsm_agents. */
struct nc_lsm_agent {
	__u64 exec_dev; /* the only superblock (kernel dev_t) execve may load files from */
	__u32 rules;    /* 1 << NC_LSM_* of the hooks that enforce for this agent */
	__u32 pad;
};

/* One denial, sent through the nc_lsm_events ring buffer. */
struct nc_lsm_event {
	__u64 cgid;
	__u64 arg;  /* exec/file: kernel dev_t of the file; ptrace: target tgid; socket: family << 16 | type */
	__u32 pid;  /* tgid of the denied task */
	__u8 op;    /* NC_LSM_* */
	__u8 pad[3];
	char name[64]; /* exec: path given to execve; file: the file's name; mount: fs type */
};

#define NC_LSM_EXEC 1
#define NC_LSM_MOUNT 2
#define NC_LSM_PTRACE 3
#define NC_LSM_SOCKET 4
#define NC_LSM_FILE 5

#endif
