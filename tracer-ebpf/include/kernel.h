/* SPDX-License-Identifier: GPL-2.0 */
/* The few kernel layouts offheap needs, hand-written with preserve_access_index
 * so that CO-RE relocates them against the running kernel's BTF (no generated
 * vmlinux.h). Only the fields actually read are declared. */
#ifndef OFFHEAP_KERNEL_H
#define OFFHEAP_KERNEL_H

#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/ptrace.h>

#pragma clang attribute push(__attribute__((preserve_access_index)), apply_to = record)

struct trace_entry {
	unsigned short type;
	unsigned char flags;
	unsigned char preempt_count;
	int pid;
};

/* Context of syscalls/sys_enter_* and sys_exit_*: the per-syscall formats in
 * tracefs put __syscall_nr at offset 8 and the arguments (or ret) at 16,
 * which is exactly this layout. */
struct trace_event_raw_sys_enter {
	struct trace_entry ent;
	long id;
	unsigned long args[6];
};

struct trace_event_raw_sys_exit {
	struct trace_entry ent;
	long id;
	long ret;
};

struct mm_struct {
	unsigned long start_stack;
	unsigned long start_brk;
	unsigned long brk;
};

struct task_struct {
	struct mm_struct *mm;
};

/* A socket's address family (traffic.bpf.c): include/net/sock.h. */
struct sock_common {
	unsigned short skc_family;
};

struct sock {
	struct sock_common __sk_common;
};

#pragma clang attribute pop

#endif
