// Allocation-heavy workload for `cargo xtask bench`: Buffers, JSON and zlib, the
// malloc-dense mix a busy Node service runs. It times itself (only the loop, not
// node's start-up or a tracer's attach) and prints `alloc-loop: elapsed_ms=<ms>` last.
//
// Usage: node bench/alloc-loop.js [iterations]
'use strict';
const zlib = require('zlib');

const iterations = Number(process.argv[2] || 4000);
if (!Number.isInteger(iterations) || iterations <= 0) {
  console.error(`alloc-loop: iterations must be a positive integer, got ${process.argv[2]}`);
  process.exit(1);
}

function work(n) {
  const payload = {
    id: 0,
    user: { name: 'bench', roles: ['a', 'b', 'c'], tags: new Array(16).fill('tag') },
    items: Array.from({ length: 32 }, (_, i) => ({ sku: `sku-${i}`, qty: i, price: i * 1.25 })),
  };
  let sink = 0;
  for (let i = 0; i < n; i++) {
    payload.id = i;
    // Buffers of several sizes: small ones come from node's pool, large ones from the
    // ArrayBuffer allocator (calloc/malloc).
    const a = Buffer.alloc(64 + (i % 64) * 64);
    const b = Buffer.allocUnsafeSlow(16384 + (i % 8) * 4096);
    a[0] = i & 0xff;
    b[0] = a[0];
    const text = JSON.stringify(payload);
    const back = JSON.parse(text);
    const z = zlib.deflateSync(Buffer.from(text), { level: 1 });
    sink += back.items.length + z.length + a.length + b.length;
  }
  return sink;
}

function run() {
  const t0 = process.hrtime.bigint();
  const sink = work(iterations);
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  // `sink` keeps the loop's results observable so nothing is optimised away.
  console.log(`alloc-loop: iterations=${iterations} sink=${sink}`);
  console.log(`alloc-loop: elapsed_ms=${ms.toFixed(1)}`);
}

run();
