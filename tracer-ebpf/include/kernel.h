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

struct file;

struct vm_area_struct {
	unsigned long vm_flags;   /* in an anonymous union since 6.3: CO-RE finds it */
	struct file *vm_file;     /* NULL for anonymous memory */
};

/* A socket's address family (traffic.bpf.c): include/net/sock.h. */
struct sock_common {
	unsigned short skc_family;
};

struct sock {
	struct sock_common __sk_common;
};

#pragma clang attribute pop

/* <linux/mman.h> / <asm-generic/mman-common.h> values (x86-64), for the
 * programs that read mmap/madvise arguments. */
#define OFFHEAP_MAP_TYPE 0x0f
#define OFFHEAP_MAP_PRIVATE 0x02
#define OFFHEAP_MAP_ANONYMOUS 0x20
#define OFFHEAP_MAP_NORESERVE 0x4000
#define OFFHEAP_PROT_EXEC 0x4
#define OFFHEAP_MADV_DONTNEED 4
#define OFFHEAP_MADV_FREE 8
#define OFFHEAP_MADV_REMOVE 9
/* include/linux/mm.h */
#define OFFHEAP_VM_EXEC 0x4

#endif
