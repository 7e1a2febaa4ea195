/* SPDX-License-Identifier: GPL-2.0 */
/* Helpers on the shared maps, written once for every program file (as
 * libbpf-tools' maps.bpf.h). Included by offheap.bpf.c after the maps. */
#ifndef OFFHEAP_MAPS_BPF_H
#define OFFHEAP_MAPS_BPF_H

#include <linux/errno.h>

/* Counts one occurrence of c in the per-CPU `counters` array. */
static __always_inline void count(enum counter c)
{
	__u32 k = c;
	__u64 *v = bpf_map_lookup_elem(&counters, &k);

	/* Per-CPU slot: no other CPU writes it, a plain increment is enough. */
	if (v)
		(*v)++;
}

/* The target's flags, or 0 when the tgid is not traced. */
static __always_inline __u32 target_flags(__u32 tgid)
{
	struct target_info *t = bpf_map_lookup_elem(&targets, &tgid);

	return t ? t->flags : 0;
}

/* The value under key in a hash map, created from *init when missing.
 * NOEXIST: another CPU may create it in between; the lookup after the update
 * finds whichever won. NULL when the map is full. */
static __always_inline void *lookup_or_init(void *map, const void *key, const void *init)
{
	void *v = bpf_map_lookup_elem(map, key);

	if (v)
		return v;
	bpf_map_update_elem(map, key, init, BPF_NOEXIST);
	return bpf_map_lookup_elem(map, key);
}

#endif
