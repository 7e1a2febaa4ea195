/* `cargo xtask bench --only unwind`: the BPF walker's cost per frame. Built
 * twice from this file, with frame pointers (-fno-omit-frame-pointer: every
 * frame is the frame-pointer step) and without (-fomit-frame-pointer: every
 * frame of the program needs its unwind-table row). `walk-chain DEPTH N`
 * recurses DEPTH noinline calls deep, then makes N malloc(64)+free pairs
 * there, so every malloc's stack is DEPTH frames deeper than at depth 0.
 * The recursion's frames share one return address: the walker's unwind cache
 * answers after the first, as it does for the hot call sites of a real
 * program. */
#include <stdio.h>
#include <stdlib.h>

#define NOINLINE __attribute__((noinline))

/* Written after each call: keeps calls from being tail calls. */
volatile unsigned long walk_sink;
/* Each block goes through here: the compiler may not drop the pair. */
void *volatile walk_block;

NOINLINE void descend(int depth, long n)
{
	if (depth > 0) {
		descend(depth - 1, n);
		walk_sink += (unsigned long)depth;
		return;
	}
	for (long i = 0; i < n; i++) {
		walk_block = malloc(64);
		free(walk_block);
	}
}

int main(int argc, char **argv)
{
	int depth = argc > 1 ? atoi(argv[1]) : 0;
	long n = argc > 2 ? atol(argv[2]) : 100000;

	descend(depth, n);
	printf("walk-chain: depth=%d n=%ld\n", depth, n);
	return 0;
}
