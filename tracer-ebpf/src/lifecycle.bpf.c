// SPDX-License-Identifier: GPL-2.0
/*
 * Process lifecycle: exec and exit of traced processes, fork of a traced
 * process, and OOM-kill victims. Userspace uses EXEC to pick up new targets
 * (watch mode), EXIT to finish a process's report, and OOM_VICTIM to write the
 * post-mortem. Included by offheap.bpf.c, which defines the maps.
 */
#include <stdbool.h>

/* Set by userspace before load: emit EXEC for every exec on the host, so that
 * `watch` can start tracing new node processes, and OOM_VICTIM for every
 * victim; otherwise both only for tracked tgids. EXIT and FORK are always
 * for tracked tgids only (they are frequent and only matter for targets). */
const volatile bool watch_exec = false;

/*
 * Tracepoint records, as in /sys/kernel/tracing/events/<sys>/<event>/format.
 * The names match the kernel's trace_event_raw_* types so that CO-RE relocates
 * every field offset against the running kernel's BTF.
 */
/* struct trace_entry comes from kernel.h. */
/* A __data_loc field: the low 16 bits are the offset of the string from the
 * start of the record, the high 16 bits its length (include/trace/stages). */
struct trace_event_raw_sched_process_exec {
	struct trace_entry ent;
	__u32 __data_loc_filename;
	int pid;
	int old_pid;
} __attribute__((preserve_access_index));

struct trace_event_raw_sched_process_exit {
	struct trace_entry ent;
	char comm[16];
	int pid;
	int prio;
	bool group_dead;
} __attribute__((preserve_access_index));

struct trace_event_raw_mark_victim {
	struct trace_entry ent;
	int pid;
	__u32 __data_loc_comm;
	unsigned long total_vm;
	unsigned long anon_rss;
	unsigned long file_rss;
	unsigned long shmem_rss;
	unsigned int uid;
	unsigned long pgtables;
	short oom_score_adj;
} __attribute__((preserve_access_index));

/* Only the fields read here; the ___offheap_lc flavour suffix is dropped by
 * CO-RE when matching against the kernel's struct task_struct. */
struct task_struct___offheap_lc {
	int pid;
	int tgid;
	int exit_code;
} __attribute__((preserve_access_index));

static __always_inline bool lifecycle_tracked(__u32 tgid)
{
	return bpf_map_lookup_elem(&targets, &tgid) != NULL;
}

static __always_inline struct proc_event *lifecycle_reserve(__u32 kind, __u32 tgid)
{
	struct proc_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);

	if (!e) {
		count(OFFHEAP_CTR_EVENTS_LOST);
		return NULL;
	}
	e->hdr.kind = kind;
	e->hdr.tgid = tgid;
	e->hdr.ts_ns = bpf_ktime_get_ns();
	e->child_tgid = 0;
	e->exit_code = 0;
	return e;
}

SEC("tracepoint/sched/sched_process_exec")
int sched_process_exec(struct trace_event_raw_sched_process_exec *ctx)
{
	/* After exec the caller is the thread-group leader (de_thread() made it
	 * so), and begin_new_exec() already set comm to the new binary's name. */
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct proc_event *e;

	if (!watch_exec && !lifecycle_tracked(tgid))
		return 0;
	e = lifecycle_reserve(OFFHEAP_EV_EXEC, tgid);
	if (!e)
		return 0;
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	bpf_ringbuf_submit(e, 0);
	return 0;
}

SEC("tracepoint/sched/sched_process_exit")
int sched_process_exit(struct trace_event_raw_sched_process_exit *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 tgid = pid_tgid >> 32;
	struct task_struct___offheap_lc *task;
	struct proc_event *e;
	bool whole_process;

	/* The tracepoint fires once per exiting thread. group_dead (kernel >= 6.16)
	 * is true for the last thread of the group; before it, the leader's exit
	 * (pid == tgid) is the best available sign of the process ending. */
	if (bpf_core_field_exists(ctx->group_dead))
		whole_process = BPF_CORE_READ(ctx, group_dead);
	else
		whole_process = (__u32)pid_tgid == tgid;
	if (!whole_process || !lifecycle_tracked(tgid))
		return 0;
	e = lifecycle_reserve(OFFHEAP_EV_EXIT, tgid);
	if (!e)
		return 0;
	/* do_exit() stores the wait status in task->exit_code before this
	 * tracepoint: (status & 0xff) << 8 for exit(), the signal number if killed. */
	task = (struct task_struct___offheap_lc *)bpf_get_current_task();
	e->exit_code = BPF_CORE_READ(task, exit_code);
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	bpf_ringbuf_submit(e, 0);
	return 0;
}

SEC("tp_btf/sched_process_fork")
int BPF_PROG(sched_process_fork, struct task_struct___offheap_lc *parent,
	     struct task_struct___offheap_lc *child)
{
	__u32 tgid = BPF_CORE_READ(parent, tgid);
	__u32 child_pid = BPF_CORE_READ(child, pid);
	__u32 child_tgid = BPF_CORE_READ(child, tgid);
	struct proc_event *e;

	/* New threads share the parent's tgid; only a new process is reported. */
	if (child_pid != child_tgid)
		return 0;
	struct target_info *t = bpf_map_lookup_elem(&targets, &tgid);
	if (!t)
		return 0;
	/* A followed target's child is traced from its first instruction: it
	 * becomes a target here, before it runs (the tracepoint fires in
	 * copy_process, before wake_up_new_task), with the parent's flags.
	 * Userspace attaches its uprobes when it sees the record (a child that
	 * only forks shares the parent's uprobes' files, not their per-PID
	 * filter), and again after its exec. */
	if (t->flags & OFFHEAP_TARGET_FOLLOW) {
		struct target_info child_info = *t;

		if (bpf_map_update_elem(&targets, &child_tgid, &child_info, BPF_NOEXIST) < 0)
			count(OFFHEAP_CTR_TARGETS_FULL);
	}
	e = lifecycle_reserve(OFFHEAP_EV_FORK, tgid);
	if (!e)
		return 0;
	e->child_tgid = child_tgid;
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	bpf_ringbuf_submit(e, 0);
	return 0;
}

SEC("tracepoint/oom/mark_victim")
int mark_victim(struct trace_event_raw_mark_victim *ctx)
{
	/* The victim is not the current task (the OOM killer runs in the
	 * allocating task), so its pid comes from the record. The memcg and global
	 * OOM killers pick thread-group leaders, and find_lock_task_mm() keeps the
	 * leader unless it already exited: the pid is the tgid but for that case. */
	__u32 tgid = BPF_CORE_READ(ctx, pid);
	struct oom_event *e;
	__u32 loc;

	count(OFFHEAP_CTR_OOM_KILLS);
	if (!watch_exec && !lifecycle_tracked(tgid))
		return 0;
	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count(OFFHEAP_CTR_EVENTS_LOST);
		return 0;
	}
	e->hdr.kind = OFFHEAP_EV_OOM_VICTIM;
	e->hdr.tgid = tgid;
	e->hdr.ts_ns = bpf_ktime_get_ns();
	/* Since 6.2 (commit "mm, oom: add more fields to mark_victim") every size
	 * is in KiB. */
	e->total_vm_kb = BPF_CORE_READ(ctx, total_vm);
	e->anon_rss_kb = BPF_CORE_READ(ctx, anon_rss);
	e->file_rss_kb = BPF_CORE_READ(ctx, file_rss);
	e->shmem_rss_kb = BPF_CORE_READ(ctx, shmem_rss);
	e->pgtables_kb = BPF_CORE_READ(ctx, pgtables);
	e->uid = BPF_CORE_READ(ctx, uid);
	e->oom_score_adj = BPF_CORE_READ(ctx, oom_score_adj);
	e->_pad = 0;
	loc = BPF_CORE_READ(ctx, __data_loc_comm);
	if (bpf_probe_read_kernel_str(e->comm, sizeof(e->comm), (void *)ctx + (loc & 0xffff)) < 0)
		e->comm[0] = 0;
	bpf_ringbuf_submit(e, 0);
	return 0;
}
