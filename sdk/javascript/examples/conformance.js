'use strict';
// The conformance agent of sdk/CONFORMANCE.md: tests/host/sdk.rs runs it in a sandbox and
// reads its stdout. LANG_NAME names the language, PEER the other agent (default hub).
const fs = require('fs');
const net = require('net');
const { connect, BadRequest, Denied } = require('../nanoclaw');

const LANG = process.env.LANG_NAME || 'javascript';
const PEER = process.env.PEER || 'hub';

// Synchronous, so no line is lost when the supervisor kills the agent.
const say = (line) => fs.writeSync(1, `conformance: ${line}\n`);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function expectError(Class, promise) {
  try {
    await promise;
    say('unexpected success');
  } catch (e) {
    say(e instanceof Class ? `error ${e.code}: ${e.reason}` : `unexpected error ${e.name}: ${e.message}`);
  }
}

function tcp(port) {
  return new Promise((resolve) => {
    const s = net.connect({ host: '127.0.0.1', port });
    const done = (result) => { clearTimeout(timer); s.destroy(); resolve(result); };
    const timer = setTimeout(() => done('error timeout'), 3000);
    s.once('connect', () => done('ok'));
    s.once('error', (e) => done(e.code === 'EPERM' || e.code === 'EACCES' ? 'denied' : `error ${e.code || e.message}`));
  });
}

async function main() {
  const c = await connect();
  say(`hello agent=${c.hello.agent} heartbeat_s=${c.hello.heartbeat_s}`);
  const hb = c.startHeartbeat();

  const cfg = await c.config();
  const send = cfg.channels.send.map((ch) => `${ch.to}/${ch.topic}`).join(',');
  const recv = cfg.channels.receive.map((ch) => `${ch.from}/${ch.topic}`).join(',');
  say(`config memory_bytes=${cfg.memory_bytes} send=${send} receive=${recv} ` +
    `energy_budget_mwh=${cfg.energy ? cfg.energy.budget_mwh : 'none'} runtime=${cfg.runtime ?? 'none'}`);

  say(`outbox seq=${await c.outboxPut('telemetry', { lang: LANG, n: 1 })}`);
  await expectError(BadRequest, c.outboxPut('Bad Topic', 1));
  await expectError(Denied, c.send(PEER, 'secrets', 'x'));
  const sent = await c.send(PEER, 'readings', { lang: LANG });
  say(`send delivered=${sent.delivered ?? 'none'} queued=${sent.queued ?? 'none'}`);

  say('ready');
  const msg = await c.receive(60000);
  if (!msg) throw new Error('no message within 60 s');
  say(`message from=${msg.from} topic=${msg.topic}`);
  const { token, port, other_port: otherPort } = msg.data;

  const grant = await c.requestCapability(token);
  say(`grant capability=${grant.capability} not_after=${grant.not_after}`);
  say(`connect granted ${await tcp(port)}`);
  say(`connect other ${await tcp(otherPort)}`);
  await expectError(Denied, c.requestCapability(token));

  while (Date.now() / 1000 <= grant.not_after + 2) await sleep(200);
  say(`connect expired ${await tcp(port)}`);

  hb.stop();
  say('heartbeat stopped');
  setInterval(() => {}, 1 << 30); // sleep forever: the supervisor kills us for the missed heartbeat
}

main().catch((e) => {
  say(`fatal ${e.name}: ${e.message}`);
  process.exit(1);
});
