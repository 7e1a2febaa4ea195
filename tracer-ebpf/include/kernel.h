/* SPDX-License-Identifier: GPL-2.0 */
/* The few kernel layouts offheap needs, hand-written with preserve_access_index
 * so that CO-RE relocates them against the running kernel's BTF. */
#ifndef OFFHEAP_KERNEL_H
#define OFFHEAP_KERNEL_H

#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/ptrace.h>

#endif
