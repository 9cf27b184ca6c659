// SPDX-License-Identifier: GPL-2.0
/* BPF LSM hooks for nanoclaw's agents: exec only from the agent's bundle, no mounts, no
 * ptrace of other processes, no raw or packet sockets, and no opens of files on mounts outside
 * the agent's own mount namespace (its rootfs, scratch, /dev and /proc).
 *
 * The hooks are global, so every decision starts with "is this task one of ours": its cgroup
 * v2 id must be in nc_lsm_agents, and it must run with no_new_privs. The sandbox init sets
 * no_new_privs in the agent just before its exec and it can never be cleared, so the init's
 * own setup (mounting the agent's root, re-exec of itself) stays outside the rules and every
 * task of the agent is inside them. Tasks outside nanoclaw's cgroups only pay a map lookup.
 * Denials return -EPERM and are reported on the nc_lsm_events ring buffer. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

#include "kernel.h"
#include "nanoclaw.h"

#define EPERM 1
#define AF_PACKET 17
#define SOCK_RAW 3
/* include/linux/mount.h: the namespace of kernel-internal mounts (pipes, sockets, memfd). */
#define MNT_NS_INTERNAL ((struct mnt_namespace *)-22L)

char LICENSE[] SEC("license") = "GPL";

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, NC_MAX_AGENTS);
	__type(key, __u64); /* cgroup id */
	__type(value, struct nc_lsm_agent);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} nc_lsm_agents SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 64 * 1024);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} nc_lsm_events SEC(".maps");

/* The agent entry of the current task if `op` is enforced for it, else 0. */
static __always_inline struct nc_lsm_agent *held(__u64 *cg, __u8 op)
{
	*cg = bpf_get_current_cgroup_id();
	struct nc_lsm_agent *a = bpf_map_lookup_elem(&nc_lsm_agents, cg);
	if (!a || !(a->rules & (1U << op)))
		return 0;
	struct task_struct *t = (struct task_struct *)bpf_get_current_task();
	if (!(BPF_CORE_READ(t, atomic_flags) & 1))
		return 0; /* not armed yet: the sandbox init before the agent's exec */
	return a;
}

static __always_inline int deny(__u64 cg, __u8 op, __u64 arg, const char *name, int user)
{
	struct nc_lsm_event *e = bpf_ringbuf_reserve(&nc_lsm_events, sizeof(*e), 0);
	if (e) {
		e->cgid = cg;
		e->arg = arg;
		e->pid = bpf_get_current_pid_tgid() >> 32;
		e->op = op;
		e->pad[0] = e->pad[1] = e->pad[2] = 0;
		e->name[0] = 0;
		if (name) {
			if (user)
				bpf_probe_read_user_str(e->name, sizeof(e->name), name);
			else
				bpf_probe_read_kernel_str(e->name, sizeof(e->name), name);
		}
		bpf_ringbuf_submit(e, 0);
	}
	return -EPERM;
}

/* The mount namespace a file was opened through (MNT_NS_INTERNAL for pipes and the like). */
static __always_inline struct mnt_namespace *ns_of(struct file *f)
{
	struct vfsmount *vm = BPF_CORE_READ(f, f_path.mnt);
	struct mount *m = (void *)vm - bpf_core_field_offset(struct mount, mnt);
	return BPF_CORE_READ(m, mnt_ns);
}

static __always_inline struct mnt_namespace *my_ns(void)
{
	struct task_struct *t = (struct task_struct *)bpf_get_current_task();
	return BPF_CORE_READ(t, nsproxy, mnt_ns);
}

static __always_inline __u64 dev_of(struct file *f)
{
	return BPF_CORE_READ(f, f_path.mnt, mnt_sb, s_dev);
}

SEC("lsm/bprm_check_security")
int nc_exec(unsigned long long *ctx)
{
	struct linux_binprm *bprm = (void *)ctx[0];
	int ret = (int)ctx[1];
	__u64 cg;
	if (ret)
		return ret;
	struct nc_lsm_agent *a = held(&cg, NC_LSM_EXEC);
	if (!a)
		return 0;
	struct file *f = BPF_CORE_READ(bprm, file);
	__u64 dev = dev_of(f);
	if (dev == a->exec_dev && ns_of(f) == my_ns())
		return 0;
	return deny(cg, NC_LSM_EXEC, dev, BPF_CORE_READ(bprm, filename), 0);
}

SEC("lsm/sb_mount")
int nc_mount(unsigned long long *ctx)
{
	const char *type = (const char *)ctx[2];
	int ret = (int)ctx[5];
	__u64 cg;
	if (ret)
		return ret;
	if (!held(&cg, NC_LSM_MOUNT))
		return 0;
	return deny(cg, NC_LSM_MOUNT, ctx[3], type, 0);
}

SEC("lsm/ptrace_access_check")
int nc_ptrace(unsigned long long *ctx)
{
	struct task_struct *child = (void *)ctx[0];
	int ret = (int)ctx[2];
	__u64 cg;
	if (ret)
		return ret;
	if (!held(&cg, NC_LSM_PTRACE))
		return 0;
	int tgid = BPF_CORE_READ(child, tgid);
	if (tgid == (int)(bpf_get_current_pid_tgid() >> 32))
		return 0;
	return deny(cg, NC_LSM_PTRACE, (__u64)tgid, 0, 0);
}

SEC("lsm/socket_create")
int nc_socket(unsigned long long *ctx)
{
	int family = (int)ctx[0];
	int type = (int)ctx[1];
	int kern = (int)ctx[3];
	int ret = (int)ctx[4];
	__u64 cg;
	if (ret)
		return ret;
	if (kern || (family != AF_PACKET && type != SOCK_RAW))
		return 0;
	if (!held(&cg, NC_LSM_SOCKET))
		return 0;
	return deny(cg, NC_LSM_SOCKET, ((__u64)family << 16) | (__u16)type, 0, 0);
}

SEC("lsm/file_open")
int nc_file_open(unsigned long long *ctx)
{
	struct file *f = (void *)ctx[0];
	int ret = (int)ctx[1];
	__u64 cg;
	if (ret)
		return ret;
	if (!held(&cg, NC_LSM_FILE))
		return 0;
	struct mnt_namespace *ns = ns_of(f);
	if (ns == my_ns() || ns == MNT_NS_INTERNAL)
		return 0;
	return deny(cg, NC_LSM_FILE, dev_of(f), (const char *)BPF_CORE_READ(f, f_path.dentry, d_name.name), 0);
}
