'use strict';
// The round trip program of sdk/CONFORMANCE.md: 90 heartbeats one after another (inside the
// socket's burst of 100) and the latency of one call as the caller sees it.
const { connect } = require('../nanoclaw');

async function main() {
  const c = await connect();
  const us = [];
  for (let i = 0; i < 90; i++) {
    const t = process.hrtime.bigint();
    await c.heartbeat();
    us.push(Number(process.hrtime.bigint() - t) / 1000);
  }
  c.close();
  us.sort((a, b) => a - b);
  // Nearest rank, as the other SDKs compute it.
  const at = (q) => Math.round(us[Math.max(0, Math.ceil(q * us.length) - 1)]);
  const mean = Math.round(us.reduce((a, b) => a + b, 0) / us.length);
  console.log(`roundtrip lang=${process.env.LANG_NAME || 'javascript'} n=${us.length} p50_us=${at(0.5)} p99_us=${at(0.99)} mean_us=${mean}`);
}

main().catch((e) => {
  console.error(`roundtrip: ${e.name}: ${e.message}`);
  process.exit(1);
});
