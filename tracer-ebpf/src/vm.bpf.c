// SPDX-License-Identifier: GPL-2.0
/* Mapping changes through the syscall tracepoints, so that direct syscalls
 * count too, not only libc's wrappers. Arguments are kept in `vm_inflight`
 * from sys_enter to sys_exit; a vm_event goes to the `events` ring buffer only
 * when the syscall succeeded. Userspace (accounting/vm.rs) keeps the ranges.
 * Included by offheap.bpf.c. */

/* <linux/mman.h> / <asm-generic/mman-common.h> values (x86-64). */
#define OFFHEAP_MAP_TYPE 0x0f
#define OFFHEAP_MAP_PRIVATE 0x02
#define OFFHEAP_MAP_ANONYMOUS 0x20
#define OFFHEAP_MADV_DONTNEED 4
#define OFFHEAP_MADV_FREE 8
#define OFFHEAP_MADV_REMOVE 9
/* Syscalls return -errno in [-4095, -1] (include/linux/err.h MAX_ERRNO). */
#define OFFHEAP_IS_ERR(x) ((unsigned long)(x) >= (unsigned long)-4095)

static __always_inline __u64 page_up(__u64 len)
{
	__u64 page = page_size ? page_size : 4096;

	return (len + page - 1) / page * page;
}

/* The user stack pointer at the syscall instruction. */
static __always_inline __u64 user_sp(void)
{
	return PT_REGS_SP(user_regs());
}

static __always_inline int vm_enter(void *ctx, __u32 syscall, __u64 addr, __u64 len,
				    __u64 old_len, __u32 flags, __u32 prot)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 tgid = pid_tgid >> 32;

	if (!(target_flags(tgid) & OFFHEAP_TARGET_VM))
		return 0;
	__u64 sp = user_sp();
	/* Mappings the allocator makes while serving a traced call are already
	 * counted by that call (madvise is kept: resident mode needs it, and it
	 * never adds bytes). */
	if (syscall != OFFHEAP_EV_MADVISE && inflight_of(sp))
		return 0;
	struct vm_args a = {
		.addr = addr,
		.len = len,
		.old_len = old_len,
		.flags = flags,
		.prot = prot,
		.syscall = syscall,
	};
	if (syscall == OFFHEAP_EV_MMAP || syscall == OFFHEAP_EV_MREMAP || syscall == OFFHEAP_EV_BRK)
		take_syscall_stack(&a.stack, tgid);
	else
		a.stack.tgid = tgid;
	if (syscall == OFFHEAP_EV_BRK) {
		/* brk returns the new break; the old one is only known here. */
		struct task_struct *task = bpf_get_current_task_btf();
		a.old_len = BPF_CORE_READ(task, mm, brk);
	}
	if (bpf_map_update_elem(&vm_inflight, &pid_tgid, &a, BPF_ANY) < 0)
		count(OFFHEAP_CTR_INFLIGHT_FULL);
	return 0;
}

static __always_inline int vm_exit(struct trace_event_raw_sys_exit *ctx, __u32 syscall)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct vm_args *p = bpf_map_lookup_elem(&vm_inflight, &pid_tgid);

	if (!p)
		return 0;
	struct vm_args a = *p;
	bpf_map_delete_elem(&vm_inflight, &pid_tgid);
	if (a.syscall != syscall)
		return 0;
	long ret = BPF_CORE_READ(ctx, ret);

	struct vm_event ev = {};
	ev.hdr.kind = syscall;
	ev.hdr.tgid = pid_tgid >> 32;
	ev.flags = a.flags;
	ev.prot = a.prot;
	ev.stack = a.stack;
	switch (syscall) {
	case OFFHEAP_EV_MMAP:
		if (OFFHEAP_IS_ERR(ret))
			return 0;
		ev.addr = ret;
		ev.len = page_up(a.len);
		break;
	case OFFHEAP_EV_MUNMAP:
	case OFFHEAP_EV_MADVISE:
		if (ret != 0)
			return 0;
		ev.addr = a.addr;
		ev.len = page_up(a.len);
		break;
	case OFFHEAP_EV_MREMAP:
		if (OFFHEAP_IS_ERR(ret))
			return 0;
		ev.old_addr = a.addr;
		ev.old_len = page_up(a.old_len);
		ev.addr = ret;
		ev.len = page_up(a.len);
		break;
	case OFFHEAP_EV_BRK:
		/* On failure brk returns the unchanged break. */
		if ((__u64)ret == a.old_len)
			return 0;
		ev.old_addr = a.old_len;
		ev.addr = ret;
		break;
	default:
		return 0;
	}
	ev.hdr.ts_ns = bpf_ktime_get_ns();
	if (bpf_ringbuf_output(&events, &ev, sizeof(ev), 0) < 0)
		count(OFFHEAP_CTR_EVENTS_LOST);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_mmap")
int mmap_enter(struct trace_event_raw_sys_enter *ctx)
{
	__u32 flags = BPF_CORE_READ(ctx, args[3]);

	__u32 prot = BPF_CORE_READ(ctx, args[2]);

	/* Only anonymous private mappings are allocations: file and shared
	 * mappings are not the process's own memory, and a PROT_NONE mapping
	 * is a reservation of address space (V8 reserves its cages this way),
	 * not memory. */
	if (!(flags & OFFHEAP_MAP_ANONYMOUS) || (flags & OFFHEAP_MAP_TYPE) != OFFHEAP_MAP_PRIVATE ||
	    prot == 0)
		return 0;
	return vm_enter(ctx, OFFHEAP_EV_MMAP, BPF_CORE_READ(ctx, args[0]),
			BPF_CORE_READ(ctx, args[1]), 0, flags, prot);
}

SEC("tracepoint/syscalls/sys_exit_mmap")
int mmap_exit(struct trace_event_raw_sys_exit *ctx)
{
	return vm_exit(ctx, OFFHEAP_EV_MMAP);
}

SEC("tracepoint/syscalls/sys_enter_munmap")
int munmap_enter(struct trace_event_raw_sys_enter *ctx)
{
	return vm_enter(ctx, OFFHEAP_EV_MUNMAP, BPF_CORE_READ(ctx, args[0]),
			BPF_CORE_READ(ctx, args[1]), 0, 0, 0);
}

SEC("tracepoint/syscalls/sys_exit_munmap")
int munmap_exit(struct trace_event_raw_sys_exit *ctx)
{
	return vm_exit(ctx, OFFHEAP_EV_MUNMAP);
}

SEC("tracepoint/syscalls/sys_enter_mremap")
int mremap_enter(struct trace_event_raw_sys_enter *ctx)
{
	/* mremap(old_addr, old_len, new_len, flags, new_addr) */
	return vm_enter(ctx, OFFHEAP_EV_MREMAP, BPF_CORE_READ(ctx, args[0]),
			BPF_CORE_READ(ctx, args[2]), BPF_CORE_READ(ctx, args[1]),
			BPF_CORE_READ(ctx, args[3]), 0);
}

SEC("tracepoint/syscalls/sys_exit_mremap")
int mremap_exit(struct trace_event_raw_sys_exit *ctx)
{
	return vm_exit(ctx, OFFHEAP_EV_MREMAP);
}

SEC("tracepoint/syscalls/sys_enter_brk")
int brk_enter(struct trace_event_raw_sys_enter *ctx)
{
	return vm_enter(ctx, OFFHEAP_EV_BRK, BPF_CORE_READ(ctx, args[0]), 0, 0, 0, 0);
}

SEC("tracepoint/syscalls/sys_exit_brk")
int brk_exit(struct trace_event_raw_sys_exit *ctx)
{
	return vm_exit(ctx, OFFHEAP_EV_BRK);
}

SEC("tracepoint/syscalls/sys_enter_madvise")
int madvise_enter(struct trace_event_raw_sys_enter *ctx)
{
	__u32 advice = BPF_CORE_READ(ctx, args[2]);

	if (advice != OFFHEAP_MADV_DONTNEED && advice != OFFHEAP_MADV_FREE &&
	    advice != OFFHEAP_MADV_REMOVE)
		return 0;
	return vm_enter(ctx, OFFHEAP_EV_MADVISE, BPF_CORE_READ(ctx, args[0]),
			BPF_CORE_READ(ctx, args[1]), 0, advice, 0);
}

SEC("tracepoint/syscalls/sys_exit_madvise")
int madvise_exit(struct trace_event_raw_sys_exit *ctx)
{
	return vm_exit(ctx, OFFHEAP_EV_MADVISE);
}
