// SPDX-License-Identifier: GPL-2.0
/* Malloc mode's mapping changes through the raw syscall tracepoints
 * (sys_enter, sys_exit), so that direct syscalls count too, not only libc's
 * wrappers. Arguments are kept in `vm_inflight` from sys_enter to sys_exit;
 * a vm_event goes to the `events` ring buffer only when the syscall
 * succeeded. Userspace (accounting/vm.rs) keeps the ranges. Included by
 * offheap.bpf.c.
 *
 * Two BTF-typed raw tracepoints instead of ten perf tracepoints (one per
 * syscall and direction): each perf tracepoint's detach waits out a grace
 * period under the kernel-wide event_mutex (perf_trace_event_unreg, ~80 ms
 * here, one after the other), which made exit take a second more. The cost:
 * every syscall of the host runs the switch below before it returns. */

/* x86-64 syscall numbers (arch/x86/entry/syscalls/syscall_64.tbl). */
#define OFFHEAP_NR_MMAP 9
#define OFFHEAP_NR_MUNMAP 11
#define OFFHEAP_NR_BRK 12
#define OFFHEAP_NR_MREMAP 25
#define OFFHEAP_NR_MADVISE 28

/* The kernel's x86-64 struct pt_regs fields read here (the UAPI struct of
 * <asm/ptrace.h> names them rdi, rsi...): CO-RE relocates their offsets. A
 * syscall's arguments are in di, si, dx, r10, r8, r9; orig_ax is its number. */
struct pt_regs___offheap {
	unsigned long r10;
	unsigned long dx;
	unsigned long si;
	unsigned long di;
	unsigned long orig_ax;
} __attribute__((preserve_access_index));

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

static __always_inline int vm_enter(__u32 syscall, __u64 addr, __u64 len, __u64 old_len,
				    __u32 flags, __u32 prot)
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
	if (syscall == OFFHEAP_EV_MMAP || syscall == OFFHEAP_EV_MREMAP || syscall == OFFHEAP_EV_BRK) {
		take_syscall_stack(&a.stack, tgid);
		a.stack.async_stack = thread_async_stack();
	} else
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

static __always_inline int vm_exit(__u32 syscall, long ret)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct vm_args *p = bpf_map_lookup_elem(&vm_inflight, &pid_tgid);

	if (!p)
		return 0;
	struct vm_args a = *p;
	bpf_map_delete_elem(&vm_inflight, &pid_tgid);
	if (a.syscall != syscall && !(syscall == OFFHEAP_EV_MMAP && a.syscall == OFFHEAP_EV_EXEC_MAP))
		return 0;
	syscall = a.syscall;

	struct vm_event ev = {};
	ev.hdr.kind = syscall;
	ev.hdr.tgid = pid_tgid >> 32;
	ev.flags = a.flags;
	ev.prot = a.prot;
	ev.stack = a.stack;
	switch (syscall) {
	case OFFHEAP_EV_MMAP:
	case OFFHEAP_EV_EXEC_MAP:
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

SEC("tp_btf/sys_enter")
int BPF_PROG(vm_sys_enter, struct pt_regs *kregs, long id)
{
	struct pt_regs___offheap *regs = (void *)kregs;
	__u64 addr = regs->di, len = 0, old_len = 0;
	__u32 kind, flags = 0, prot = 0;

	switch (id) {
	case OFFHEAP_NR_MMAP:     /* mmap(addr, len, prot, flags, fd, off) */
		kind = OFFHEAP_EV_MMAP;
		len = regs->si;
		prot = regs->dx;
		flags = regs->r10;
		/* A file mapped executable: code (ld.so, dlopen of an addon),
		 * whose unwind tables userspace loads when it hears of it. */
		if (!(flags & OFFHEAP_MAP_ANONYMOUS) && (prot & OFFHEAP_PROT_EXEC)) {
			kind = OFFHEAP_EV_EXEC_MAP;
			break;
		}
		/* Only anonymous private mappings are allocations: file and
		 * shared mappings are not the process's own memory. A PROT_NONE
		 * one (prot 0 in the event) is a reservation of address space:
		 * V8 reserves its heap pages so and commits them with
		 * mprotect; userspace keeps it apart and asks pagemap which
		 * of its pages are resident (accounting/vm.rs). */
		if (!(flags & OFFHEAP_MAP_ANONYMOUS) ||
		    (flags & OFFHEAP_MAP_TYPE) != OFFHEAP_MAP_PRIVATE)
			return 0;
		break;
	case OFFHEAP_NR_MUNMAP:   /* munmap(addr, len) */
		kind = OFFHEAP_EV_MUNMAP;
		len = regs->si;
		break;
	case OFFHEAP_NR_MREMAP:   /* mremap(old_addr, old_len, new_len, flags, new_addr) */
		kind = OFFHEAP_EV_MREMAP;
		old_len = regs->si;
		len = regs->dx;
		flags = regs->r10;
		break;
	case OFFHEAP_NR_BRK:      /* brk(addr) */
		kind = OFFHEAP_EV_BRK;
		break;
	case OFFHEAP_NR_MADVISE:  /* madvise(addr, len, advice) */
		kind = OFFHEAP_EV_MADVISE;
		len = regs->si;
		flags = regs->dx;
		if (flags != OFFHEAP_MADV_DONTNEED && flags != OFFHEAP_MADV_FREE &&
		    flags != OFFHEAP_MADV_REMOVE)
			return 0;
		break;
	default:
		return 0;
	}
	return vm_enter(kind, addr, len, old_len, flags, prot);
}

SEC("tp_btf/sys_exit")
int BPF_PROG(vm_sys_exit, struct pt_regs *kregs, long ret)
{
	struct pt_regs___offheap *regs = (void *)kregs;

	switch (regs->orig_ax) {
	case OFFHEAP_NR_MMAP:
		return vm_exit(OFFHEAP_EV_MMAP, ret);
	case OFFHEAP_NR_MUNMAP:
		return vm_exit(OFFHEAP_EV_MUNMAP, ret);
	case OFFHEAP_NR_MREMAP:
		return vm_exit(OFFHEAP_EV_MREMAP, ret);
	case OFFHEAP_NR_BRK:
		return vm_exit(OFFHEAP_EV_BRK, ret);
	case OFFHEAP_NR_MADVISE:
		return vm_exit(OFFHEAP_EV_MADVISE, ret);
	default:
		return 0;
	}
}
