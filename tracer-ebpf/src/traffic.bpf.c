// SPDX-License-Identifier: GPL-2.0
/* Traffic of targets, in every mode: the bytes a target received on sockets
 * and the connections it accepted, counted per tgid in `traffic` (a per-CPU
 * hash of struct traffic_counts). Userspace (tracer/src/accounting/traffic.rs)
 * sums the CPUs each interval, takes the difference with the previous
 * interval and deletes the entries of processes that stopped being targets.
 * Included by offheap.bpf.c.
 *
 * Cost: both programs run only for their event (a socket read, an accept4
 * return) and leave at once for a process that is not a target (one hash
 * lookup in `targets`). */

/* <linux/socket.h> address families and recvmsg flags. */
#define OFFHEAP_AF_UNIX 1
#define OFFHEAP_AF_INET 2
#define OFFHEAP_AF_INET6 10
#define OFFHEAP_MSG_PEEK 2

/* Entries are made only for tgids in `targets` and deleted by userspace once
 * a tgid leaves: twice the targets' capacity covers the ones that left since
 * the last interval. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 2 * OFFHEAP_MAX_TARGETS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32);
	__type(value, struct traffic_counts);
} traffic SEC(".maps");

/* The tgid of the current process when it is a target, else 0 (the idle
 * task's, never traced). */
static __always_inline __u32 traffic_target(void)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;

	return target_flags(tgid) ? tgid : 0;
}

/* This CPU's counts of a target, made zeroed on first use; NULL only when
 * the map is full, which its capacity rules out. */
static __always_inline struct traffic_counts *traffic_of(__u32 tgid)
{
	struct traffic_counts zero = {};

	return lookup_or_init(&traffic, &tgid, &zero);
}

/* TP_PROTO(struct sock *sk, int ret, int flags) (include/trace/events/
 * sock.h, sock_msg_length), fired by net/socket.c sock_recvmsg_nosec with
 * sock->sk: every read(2), recv(2), recvfrom(2), recvmsg(2) and
 * recvmmsg(2) on a socket ends here (libuv reads streams with read(2)). A
 * MSG_PEEK read leaves the bytes queued: they are counted when consumed.
 * Only network and Unix-domain sockets count: netlink replies (getaddrinfo's
 * interface query) are not traffic. */
SEC("tp_btf/sock_recv_length")
int BPF_PROG(traffic_sock_recv, struct sock *sk, int ret, int flags)
{
	struct traffic_counts *c;
	unsigned short family;
	__u32 tgid;

	if (ret <= 0 || (flags & OFFHEAP_MSG_PEEK))
		return 0;
	tgid = traffic_target();
	if (!tgid)
		return 0;
	/* A BTF-typed argument: read directly (the verifier checks the access
	 * against the kernel's struct sock), no bpf_probe_read_kernel call. */
	family = sk->__sk_common.skc_family;
	if (family != OFFHEAP_AF_INET && family != OFFHEAP_AF_INET6 && family != OFFHEAP_AF_UNIX)
		return 0;
	c = traffic_of(tgid);
	if (!c)
		return 0;
	__sync_fetch_and_add(&c->received_bytes, ret);
	return 0;
}

/* syscalls/sys_exit_accept4: a connection is counted when accept4 returns
 * its descriptor (ret >= 0). libuv (node), Go, Python and nginx accept with
 * accept4; a program calling plain accept(2) is not counted. */
SEC("tracepoint/syscalls/sys_exit_accept4")
int traffic_accept4_exit(struct trace_event_raw_sys_exit *ctx)
{
	struct traffic_counts *c;
	__u32 tgid;

	if (ctx->ret < 0)
		return 0;
	tgid = traffic_target();
	if (!tgid)
		return 0;
	c = traffic_of(tgid);
	if (!c)
		return 0;
	__sync_fetch_and_add(&c->accepted, 1);
	return 0;
}
