// The bench floor's loader: floor-count BPF_OBJ LIBC CMD [ARGS...]
//
// Forks CMD held before exec on a pipe, attaches count_call to malloc and free in
// LIBC for that PID only (perf_event_open with the PID: the kernel installs the
// breakpoints only in that process's mm, and the event follows the task through
// exec), opens the gate, waits for CMD and prints `@n: <calls>` on stdout.
// bpftrace 0.17 cannot narrow a uprobe to one PID; this can.
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <bpf/bpf.h>
#include <bpf/libbpf.h>

static int fail(pid_t child, const char *what)
{
	fprintf(stderr, "floor-count: %s: %s\n", what, strerror(errno));
	if (child > 0) {
		kill(child, SIGKILL);
		waitpid(child, NULL, 0);
	}
	return 2;
}

int main(int argc, char **argv)
{
	if (argc < 4) {
		fprintf(stderr, "usage: floor-count BPF_OBJ LIBC CMD [ARGS...]\n");
		return 1;
	}
	const char *obj_path = argv[1], *libc = argv[2];
	int gate[2];

	if (pipe(gate))
		return fail(0, "pipe");
	pid_t child = fork();
	if (child < 0)
		return fail(0, "fork");
	if (child == 0) {
		char c;
		close(gate[1]);
		// EOF without a byte means the loader gave up: do not run untraced.
		if (read(gate[0], &c, 1) != 1)
			_exit(126);
		close(gate[0]);
		execvp(argv[3], argv + 3);
		fprintf(stderr, "floor-count: exec %s: %s\n", argv[3], strerror(errno));
		_exit(127);
	}
	close(gate[0]);

	struct bpf_object *obj = bpf_object__open_file(obj_path, NULL);
	if (!obj)
		return fail(child, "opening the BPF object");
	if (bpf_object__load(obj))
		return fail(child, "loading the BPF object");
	struct bpf_program *prog = bpf_object__find_program_by_name(obj, "count_call");
	if (!prog)
		return fail(child, "finding count_call");
	const char *funcs[] = { "malloc", "free" };
	for (int i = 0; i < 2; i++) {
		LIBBPF_OPTS(bpf_uprobe_opts, opts, .func_name = funcs[i]);
		if (!bpf_program__attach_uprobe_opts(prog, child, libc, 0, &opts))
			return fail(child, funcs[i]);
	}
	// FLOOR_RETURN=1: a return probe on malloc too, the floor of a tool
	// that learns each block's address (it is only in malloc's return
	// value), as exact accounting must.
	const char *ret = getenv("FLOOR_RETURN");
	if (ret && !strcmp(ret, "1")) {
		LIBBPF_OPTS(bpf_uprobe_opts, opts, .func_name = "malloc", .retprobe = true);
		if (!bpf_program__attach_uprobe_opts(prog, child, libc, 0, &opts))
			return fail(child, "malloc's return");
	}
	if (write(gate[1], "g", 1) != 1)
		return fail(child, "opening the gate");
	close(gate[1]);

	int status;
	if (waitpid(child, &status, 0) < 0)
		return fail(0, "waitpid");

	int ncpu = libbpf_num_possible_cpus();
	if (ncpu <= 0)
		return fail(0, "counting CPUs");
	__u64 *per_cpu = calloc(ncpu, sizeof(*per_cpu));
	__u32 key = 0;
	if (!per_cpu || bpf_map_lookup_elem(bpf_object__find_map_fd_by_name(obj, "calls"), &key, per_cpu))
		return fail(0, "reading the count");
	unsigned long long total = 0;
	for (int i = 0; i < ncpu; i++)
		total += per_cpu[i];
	printf("@n: %llu\n", total);
	fflush(stdout);
	return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}
