// SPDX-License-Identifier: GPL-2.0
/* The one compilation unit: maps shared by every program, then the programs. */
#include "kernel.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "offheap.h"

char LICENSE[] SEC("license") = "GPL";

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, OFFHEAP_MAX_TARGETS);
	__type(key, __u32);
	__type(value, struct target_info);
} targets SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, OFFHEAP_CTR_MAX);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, OFFHEAP_EVENTS_BYTES);
} events SEC(".maps");

#include "lifecycle.bpf.c"
#include "fault.bpf.c"
