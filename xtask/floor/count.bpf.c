// SPDX-License-Identifier: GPL-2.0
// The bench floor's BPF side: count every hit of the uprobes it is attached to
// (malloc and free of one PID). Nothing else, so it measures what any uprobe
// tool pays per call: the int3 trap, the uprobe dispatch, one program run.
#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

// Per-CPU so the count adds no cache-line bouncing; the loader sums the CPUs.
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} calls SEC(".maps");

SEC("uprobe")
int count_call(void *ctx)
{
	__u32 key = 0;
	__u64 *n = bpf_map_lookup_elem(&calls, &key);

	if (n)
		*n += 1;
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
