// Threadpool-heavy workload for `cargo xtask bench`'s threadpool part:
// ITEMS one-shot zlib.deflate() calls of a 16 KiB buffer, CONCURRENCY at a
// time. Each call is a new deflate stream whose write runs on libuv's
// threadpool (node's ThreadPoolWork -> uv_queue_work): the stream's
// deflateInit2_ and the compression both happen there. It times itself
// (the loop only) and prints `zlib-loop: items=<n> elapsed_ms=<ms>` last.
//
// Usage: node bench/zlib-loop.js [items] [concurrency]
'use strict';
const zlib = require('zlib');

const ITEMS = Number(process.argv[2] || 3000);
const CONCURRENCY = Number(process.argv[3] || 8);
const input = Buffer.alloc(16 * 1024, 'abcdefghijklmnop');

let started = 0;
let finished = 0;
const t0 = process.hrtime.bigint();

function next() {
  if (started >= ITEMS) return;
  started++;
  zlib.deflate(input, (err) => {
    if (err) throw err;
    if (++finished === ITEMS) {
      const ms = Number(process.hrtime.bigint() - t0) / 1e6;
      console.log(`zlib-loop: items=${ITEMS} elapsed_ms=${ms.toFixed(1)}`);
    } else {
      next();
    }
  });
}

for (let i = 0; i < CONCURRENCY; i++) next();
