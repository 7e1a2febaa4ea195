// The demo's leaking service: every 100 ms a request-handler-like function retains
// off-heap memory that `process.memoryUsage().heapUsed` never shows:
//   - a 256 KiB Buffer from Buffer.allocUnsafeSlow (malloc through node's ArrayBuffer allocator)
//   - a 16 KiB Buffer from Buffer.alloc (zero-filled: calloc)
//   - a zlib deflate stream that is written to and never closed (zlib's native state)
// and, for contrast, grows a JS-heap Map (the part heapUsed does show).
// It prints one line at start. It exits by itself after LEAK_SECONDS (default 60) so
// it never outlives a demo; the tracer normally stops it long before.
'use strict';
const zlib = require('zlib');

const retainedBuffers = [];
const openStreams = [];
const sessions = new Map();

function handleRequest(id) {
  const body = Buffer.allocUnsafeSlow(256 * 1024);
  body.fill(id & 0xff);
  const headers = Buffer.alloc(16 * 1024);
  retainedBuffers.push(body, headers);

  const gzip = zlib.createDeflate({ level: 6 });
  gzip.write(body.subarray(0, 4096));
  openStreams.push(gzip);

  sessions.set(`session-${id}`, { id, user: `user-${id % 97}`, seen: Date.now(), path: '/api/items' });
}

const lifetimeMs = Number(process.env.LEAK_SECONDS || 60) * 1000;
console.log(`leak.js: pid ${process.pid}, leaking every 100 ms`);
let id = 0;
const timer = setInterval(() => handleRequest(id++), 100);
setTimeout(() => {
  clearInterval(timer);
  process.exit(0);
}, lifetimeMs);
