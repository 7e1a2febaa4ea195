// Socket-heavy workload for `cargo xtask bench`'s traffic part: one process
// that is both a TCP server and its client on 127.0.0.1. It opens CONNS
// connections one after the other and on each plays PINGS request/reply
// rounds of 100 bytes, so that every round is one accept-free read on each
// side and every connection one accept4: what the traffic probes count. It
// times itself (the loop only) and prints `traffic-loop: elapsed_ms=<ms>`
// last, with the reads and accepts it expects.
//
// Usage: node bench/traffic-loop.js [connections] [pings]
'use strict';
const net = require('net');

const CONNS = Number(process.argv[2] || 500);
const PINGS = Number(process.argv[3] || 100);
const MSG = Buffer.alloc(100, 'x');

const server = net.createServer((sock) => {
  sock.setNoDelay(true);
  let got = 0;
  sock.on('data', (d) => {
    got += d.length;
    while (got >= MSG.length) {
      got -= MSG.length;
      sock.write(MSG);
    }
  });
});

function oneConnection(port) {
  return new Promise((resolve, reject) => {
    const c = net.connect(port, '127.0.0.1');
    c.setNoDelay(true);
    let rounds = 0;
    let got = 0;
    c.on('connect', () => c.write(MSG));
    c.on('data', (d) => {
      got += d.length;
      while (got >= MSG.length) {
        got -= MSG.length;
        rounds += 1;
        if (rounds === PINGS) {
          c.end();
          resolve();
          return;
        }
        c.write(MSG);
      }
    });
    c.on('error', reject);
  });
}

server.listen(0, '127.0.0.1', async () => {
  const { port } = server.address();
  const start = process.hrtime.bigint();
  for (let i = 0; i < CONNS; i++) await oneConnection(port);
  const ms = Number(process.hrtime.bigint() - start) / 1e6;
  server.close();
  console.log(`traffic-loop: connections=${CONNS} rounds=${CONNS * PINGS}`);
  console.log(`traffic-loop: elapsed_ms=${ms.toFixed(1)}`);
});
