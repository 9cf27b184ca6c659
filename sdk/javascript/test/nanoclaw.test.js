'use strict';
// Unit tests of nanoclaw.js against an in-process fake supervisor on a temporary Unix socket.
const test = require('node:test');
const assert = require('node:assert');
const fs = require('node:fs');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');
const nc = require('../nanoclaw');

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nanoclaw-js-'));
test.after(() => fs.rmSync(dir, { recursive: true, force: true }));
let serial = 0;

// A fake supervisor: answers hello itself and passes every other request to `handle(req, sock)`,
// which returns an answer object (id and ok added) or undefined to answer itself.
async function fakeServer(handle = () => ({})) {
  const srv = { path: path.join(dir, `s${++serial}.sock`), requests: [], conns: new Set(), hellos: 0 };
  srv.answer = (sock, req, body) => sock.write(JSON.stringify({ ok: true, id: req.id, ...body }) + '\n');
  srv.server = net.createServer((sock) => {
    srv.conns.add(sock);
    sock.on('close', () => srv.conns.delete(sock));
    sock.on('error', () => {});
    let buf = '';
    sock.setEncoding('utf8');
    sock.on('data', (chunk) => {
      buf += chunk;
      let nl;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const req = JSON.parse(buf.slice(0, nl));
        buf = buf.slice(nl + 1);
        srv.requests.push(req);
        if (req.op === 'hello') {
          srv.hellos++;
          srv.answer(sock, req, { agent: 'sensor', version: '1.0.0', device_id: 'dev', protocol: 1, heartbeat_s: 5 });
          if (srv.afterHello) srv.afterHello(sock);
          continue;
        }
        const body = handle(req, sock);
        if (body !== undefined) srv.answer(sock, req, body);
      }
    });
  });
  srv.drop = () => { for (const s of srv.conns) s.destroy(); };
  srv.close = () => new Promise((r) => { srv.drop(); srv.server.close(r); });
  srv.ops = (op) => srv.requests.filter((r) => r.op === op);
  await new Promise((r) => srv.server.listen(srv.path, r));
  return srv;
}

// A connected client and its server, both closed when the test ends.
async function setup(t, handle) {
  const srv = await fakeServer(handle);
  const c = await nc.connect(srv.path);
  t.after(async () => { c.close(); await srv.close(); });
  return { srv, c };
}

const event = (from, topic, data) => JSON.stringify({ event: 'message', from, topic, data }) + '\n';

test('hello, and answers matched by id with an event line in between', async (t) => {
  const { srv, c } = await setup(t, (req, sock) => {
    if (req.op === 'whoami') {
      sock.write(event('hub', 'readings', { n: 1 }));
      return { agent: 'sensor', trust: 100 };
    }
  });
  assert.deepStrictEqual(srv.requests[0], { op: 'hello', id: 1, protocol: 1 });
  assert.strictEqual(c.hello.agent, 'sensor');
  assert.strictEqual(c.hello.heartbeat_s, 5);
  assert.deepStrictEqual(await c.whoami(), { agent: 'sensor', trust: 100 });
  assert.deepStrictEqual(await c.receive(1000), { from: 'hub', topic: 'readings', data: { n: 1 } });
});

test('messages sent right after hello are queued in order', async (t) => {
  const srv = await fakeServer();
  srv.afterHello = (sock) => sock.write(event('a', 't', 1) + event('b', 't', 2));
  const c = await nc.connect(srv.path);
  t.after(async () => { c.close(); await srv.close(); });
  assert.strictEqual((await c.receive(1000)).from, 'a');
  assert.strictEqual((await c.receive(1000)).from, 'b');
});

test('each error code maps to its class with the reason verbatim', async (t) => {
  const { c } = await setup(t, (req, sock) => {
    const { code, error } = req.data;
    sock.write(JSON.stringify({ ok: false, id: req.id, error, ...(code && { code }) }) + '\n');
  });
  const cases = [
    ['bad_request', nc.BadRequest],
    ['denied', nc.Denied],
    ['unavailable', nc.Unavailable],
    ['limit', nc.LimitExceeded],
    ['something_new', nc.SupervisorError],
    [undefined, nc.SupervisorError],
  ];
  for (const [code, Class] of cases) {
    const reason = `topic \`Bad Topic\` must be 1 to 64 of a-z 0-9 . _ - (${code}) ü "q"`;
    const err = await c.outboxPut('t', { code, error: reason }).then(() => null, (e) => e);
    assert.ok(err instanceof nc.SupervisorError, `${code}: ${err}`);
    assert.strictEqual(err.constructor, Class, String(code));
    assert.strictEqual(err.reason, reason);
    assert.strictEqual(err.message, reason);
    assert.strictEqual(err.code, code ?? null);
  }
  assert.strictEqual(await c.outboxPut('t', 1).catch(() => 'still usable'), 'still usable');
});

test('an error line without id followed by close fails the call with Disconnected', async (t) => {
  const { c } = await setup(t, (req, sock) => {
    sock.end(JSON.stringify({ ok: false, error: 'rate limit of 50 messages/s crossed', code: 'limit' }) + '\n');
  });
  await assert.rejects(c.whoami(), (e) => e instanceof nc.Disconnected && /rate limit/.test(e.message));
});

test('a dropped connection fails calls in flight, the next call reconnects', async (t) => {
  const { srv, c } = await setup(t, (req) => {
    if (req.op === 'whoami') setImmediate(srv.drop); // never answered
    else return { due_by_ms: 42 };
  });
  await assert.rejects(c.whoami(), nc.Disconnected);
  assert.strictEqual(await c.heartbeat('ok'), 42);
  assert.strictEqual(srv.hellos, 2);
  assert.deepStrictEqual(srv.ops('heartbeat')[0], { op: 'heartbeat', id: 4, status: 'ok' });
});

test('reconnects after the server closes and a new one takes its place', async (t) => {
  const srv = await fakeServer(() => ({ due_by_ms: 1 }));
  const c = await nc.connect(srv.path);
  t.after(() => c.close());
  await srv.close();
  await sleep(20);
  await assert.rejects(c.heartbeat(), nc.Disconnected); // no socket at all
  const srv2 = await fakeServer(() => ({ due_by_ms: 2 }));
  t.after(() => srv2.close());
  fs.renameSync(srv2.path, srv.path);
  assert.strictEqual(await c.heartbeat(), 2);
  assert.strictEqual(srv2.hellos, 1);
});

test('connect to a missing socket is Disconnected', async () => {
  await assert.rejects(nc.connect(path.join(dir, 'missing.sock')), nc.Disconnected);
});

test('a call without an answer times out', async (t) => {
  const { c } = await setup(t, () => undefined);
  c.timeoutMs = 100;
  await assert.rejects(c.whoami(), nc.TimeoutError);
});

test('receive resolves null on timeout, and null when the client is closed', async (t) => {
  const { c } = await setup(t);
  const start = Date.now();
  assert.strictEqual(await c.receive(100), null);
  assert.ok(Date.now() - start >= 90);
  const waiting = c.receive();
  setTimeout(() => c.close(), 20);
  assert.strictEqual(await waiting, null);
  await assert.rejects(c.whoami(), nc.Disconnected);
});

test('requestCapability takes the token as an object or as its JSON text', async (t) => {
  const { srv, c } = await setup(t, () => ({ capability: 'net:127.0.0.1:80', not_after: 1700000000 }));
  const token = { agent: 'sensor', capability: 'net:127.0.0.1:80', not_after: 1700000000, sig: 'abc' };
  assert.deepStrictEqual(await c.requestCapability(token), { capability: 'net:127.0.0.1:80', not_after: 1700000000 });
  await c.requestCapability(JSON.stringify(token));
  const sent = srv.ops('request_capability').map((r) => r.token);
  assert.deepStrictEqual(sent, [token, token]);
});

test('concurrent calls each get their own answer', async (t) => {
  const held = [];
  const { srv, c } = await setup(t, (req, sock) => {
    held.push(req);
    if (held.length === 20) for (const r of held.reverse()) srv.answer(sock, r, { seq: r.data.n });
  });
  const seqs = await Promise.all(Array.from({ length: 20 }, (_, n) => c.outboxPut('t', { n })));
  assert.deepStrictEqual(seqs, Array.from({ length: 20 }, (_, n) => n));
  const ids = srv.requests.map((r) => r.id);
  assert.strictEqual(new Set(ids).size, ids.length);
});

test('send, config and outboxPut pass their fields', async (t) => {
  const { srv, c } = await setup(t, (req) => ({
    send: { delivered: 1 },
    config: { channels: { send: [], receive: [] }, energy: null, runtime: 'node' },
    outbox_put: { seq: 7 },
  })[req.op]);
  assert.deepStrictEqual(await c.send('hub', 'readings', { x: 1 }), { delivered: 1 });
  assert.strictEqual((await c.config()).runtime, 'node');
  assert.strictEqual(await c.outboxPut('telemetry', { x: 1 }), 7);
  assert.deepStrictEqual(srv.requests.slice(1).map(({ id, ...r }) => r), [
    { op: 'send', to: 'hub', topic: 'readings', data: { x: 1 } },
    { op: 'config' },
    { op: 'outbox_put', topic: 'telemetry', data: { x: 1 } },
  ]);
});

test('the heartbeat helper beats periodically, survives a drop and stops', async (t) => {
  const { srv, c } = await setup(t, () => ({ due_by_ms: 1 }));
  const hb = c.startHeartbeat(0.05, 'fine');
  await sleep(180);
  srv.drop();
  await sleep(180);
  hb.stop();
  const beats = srv.ops('heartbeat');
  assert.ok(beats.length >= 5, `${beats.length} beats`);
  assert.ok(beats.every((b) => b.status === 'fine'));
  assert.strictEqual(srv.hellos, 2);
  await sleep(120);
  assert.strictEqual(srv.ops('heartbeat').length, beats.length);
});
