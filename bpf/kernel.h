/* The few kernel-internal types the BPF LSM programs read, declared with CO-RE
 * (preserve_access_index): every field access is relocated against the running kernel's BTF at
 * load time, so one object works on every kernel with BTF, whatever the real layouts are. Only
 * the fields used are declared; their order and the struct sizes here do not matter. */
#ifndef NANOCLAW_KERNEL_H
#define NANOCLAW_KERNEL_H

#include <linux/types.h>

#pragma clang attribute push(__attribute__((preserve_access_index)), apply_to = record)

struct super_block {
	__u32 s_dev; /* dev_t: MAJOR << 20 | MINOR */
};

struct vfsmount {
	struct super_block *mnt_sb;
};

struct mnt_namespace;

/* fs/mount.h: a vfsmount is embedded in its struct mount. */
struct mount {
	struct vfsmount mnt;
	struct mnt_namespace *mnt_ns;
};

struct qstr {
	const unsigned char *name;
};

struct dentry {
	struct qstr d_name;
};

struct path {
	struct vfsmount *mnt;
	struct dentry *dentry;
};

struct file {
	struct path f_path;
};

struct nsproxy {
	struct mnt_namespace *mnt_ns;
};

struct task_struct {
	unsigned long atomic_flags; /* bit 0: PFA_NO_NEW_PRIVS */
	int tgid;
	struct nsproxy *nsproxy;
};

struct linux_binprm {
	struct file *file;
	const char *filename;
};

#pragma clang attribute pop

#endif
