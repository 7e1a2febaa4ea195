// `cargo xtask bench`'s JS frame part: N Buffers allocated (one malloc each
// in node's ArrayBuffer allocator) under a JS stack DEPTH frames deep, so
// that the BPF walker's time per malloc event, deep against shallow, gives
// its cost per JS frame. argv[2]: DEPTH (>= 1), argv[3]: N.
// The frames are distinct functions (f0..f{DEPTH-1}), each too big to be
// inlined into its caller, so that every one of them is a real frame
// whichever tier runs it (argv[3] default 50000). Prints "js-depth: depth=D elapsed_ms=T".
'use strict';
const DEPTH = Number(process.argv[2] || 1);
const N = Number(process.argv[3] || 50000);
const keep = new Array(1024);

function alloc(n) {
  for (let i = 0; i < n; i++) keep[i & 1023] = Buffer.allocUnsafeSlow(4096);
  return keep.length;
}

// f_k(n) calls f_{k+1}(n), the last one alloc(n). The padding (never run)
// keeps each body over what TurboFan inlines (max_inlined_bytecode_size).
const pad = Array.from({ length: 80 }, (_, i) => `if (n < 0) s = (s * 31 + ${i}) | 0;`).join('\n');
const fns = [];
for (let k = DEPTH - 1; k >= 0; k--) {
  const next = k === DEPTH - 1 ? alloc : fns[0];
  fns.unshift(new Function('next', `return function f${k}(n) { let s = 0;\n${pad}\nreturn next(n) + s; };`)(next));
}

const t0 = process.hrtime.bigint();
fns[0](N);
const ms = Number(process.hrtime.bigint() - t0) / 1e6;
console.log(`js-depth: depth=${DEPTH} elapsed_ms=${ms.toFixed(1)}`);
// Stay a second: the bench samples the BPF counters every 50 ms while the
// tracer runs, and its last sample must come after the loop.
setTimeout(() => {}, 1000);
