'use strict';
// nanoclaw agent SDK for Node.js (18+), CommonJS, no dependencies.
//
// A nanoclaw agent talks to its supervisor over a Unix socket with newline-delimited JSON
// (docs/AGENT_API.md). This file saves every Node agent from re-writing that client: one
// connection, answers matched to calls by id, message events queued for receive(), typed
// errors, a reconnect after a supervisor restart and a background heartbeat. It follows
// sdk/CONFORMANCE.md; copy it next to your agent and require('./nanoclaw').

const net = require('net');

const DEFAULT_SOCKET = '/run/nanoclaw.sock';
const CALL_TIMEOUT_MS = 10000;

class SupervisorError extends Error {
  constructor(reason, code = null) {
    super(reason);
    this.name = new.target.name;
    this.reason = reason;
    this.code = code;
  }
}
class BadRequest extends SupervisorError {}
class Denied extends SupervisorError {}
class Unavailable extends SupervisorError {}
class LimitExceeded extends SupervisorError {}

class Disconnected extends Error {
  constructor(message) {
    super(message);
    this.name = 'Disconnected';
  }
}
class TimeoutError extends Error {
  constructor(message) {
    super(message);
    this.name = 'TimeoutError';
  }
}

const BY_CODE = { bad_request: BadRequest, denied: Denied, unavailable: Unavailable, limit: LimitExceeded };

function supervisorError(answer) {
  const code = typeof answer.code === 'string' ? answer.code : null;
  const Class = BY_CODE[code] || SupervisorError;
  return new Class(String(answer.error), code);
}

// The op's fields of an answer, without `ok` and `id`.
function fields(answer) {
  const { ok, id, ...rest } = answer;
  return rest;
}

class Client {
  constructor(path) {
    this.path = path || process.env.NANOCLAW_SOCKET || DEFAULT_SOCKET;
    this.hello = null;
    this.timeoutMs = CALL_TIMEOUT_MS; // how long a call waits for its answer
    this._sock = null;
    this._opening = null;
    this._closed = false;
    this._nextId = 0;
    this._pending = new Map(); // id -> { resolve, reject, timer }
    this._messages = [];
    this._waiters = []; // receive() calls waiting for a message
    this._heartbeats = new Set();
  }

  // Connects (again) and says hello unless a connection is up.
  _ensure() {
    if (this._closed) return Promise.reject(new Disconnected('the client is closed'));
    if (this._opening) return this._opening;
    if (this._sock) return Promise.resolve();
    this._opening = this._open().finally(() => { this._opening = null; });
    return this._opening;
  }

  async _open() {
    const sock = await new Promise((resolve, reject) => {
      const s = net.createConnection(this.path);
      s.once('error', (e) => reject(new Disconnected(`cannot connect to ${this.path}: ${e.message}`)));
      s.once('connect', () => resolve(s));
    });
    this._attach(sock);
    this._sock = sock; // close() can end it during hello
    if (this._closed) sock.destroy();
    try {
      this.hello = await this._request(sock, 'hello', { protocol: 1 });
    } catch (e) {
      sock.destroy();
      throw e;
    }
  }

  _attach(sock) {
    let buf = '';
    let fatal = null; // an error without id: the supervisor closes the connection next
    sock.setEncoding('utf8');
    sock.on('error', () => {}); // 'close' follows
    sock.on('data', (chunk) => {
      buf += chunk;
      let nl;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        let msg;
        try {
          msg = JSON.parse(line);
        } catch {
          continue;
        }
        if (msg === null || typeof msg !== 'object') continue;
        if (msg.event !== undefined) {
          if (msg.event === 'message') this._deliver({ from: msg.from, topic: msg.topic, data: msg.data });
        } else if (msg.id === undefined || msg.id === null) {
          if (msg.ok === false) fatal = String(msg.error);
        } else {
          const p = this._pending.get(msg.id);
          if (!p) continue;
          this._pending.delete(msg.id);
          clearTimeout(p.timer);
          if (msg.ok === true) p.resolve(fields(msg));
          else p.reject(supervisorError(msg));
        }
      }
    });
    sock.on('close', () => {
      if (this._sock === sock) this._sock = null;
      const why = fatal ? `connection closed by the supervisor: ${fatal}`
        : this._closed ? 'the client is closed' : 'connection lost';
      for (const [id, p] of this._pending) {
        this._pending.delete(id);
        clearTimeout(p.timer);
        p.reject(new Disconnected(why));
      }
    });
  }

  _request(sock, op, args) {
    return new Promise((resolve, reject) => {
      if (!sock || sock.destroyed) return reject(new Disconnected('not connected'));
      const id = ++this._nextId;
      const timer = setTimeout(() => {
        this._pending.delete(id);
        reject(new TimeoutError(`no answer to ${op} within ${this.timeoutMs} ms`));
      }, this.timeoutMs);
      this._pending.set(id, { resolve, reject, timer });
      sock.write(JSON.stringify({ op, id, ...args }) + '\n');
    });
  }

  async _call(op, args = {}) {
    await this._ensure();
    return this._request(this._sock, op, args);
  }

  _deliver(message) {
    const w = this._waiters.shift();
    if (w) {
      clearTimeout(w.timer);
      w.resolve(message);
    } else {
      this._messages.push(message);
    }
  }

  /** One heartbeat; resolves the next deadline `due_by_ms` (or null). */
  async heartbeat(status) {
    const a = await this._call('heartbeat', status == null ? {} : { status: String(status) });
    return a.due_by_ms ?? null;
  }

  /**
   * Heartbeats every `intervalS` seconds (default: the manifest's heartbeat_s, else 10), the
   * first at once, until stop(). Errors are ignored and each beat reconnects if needed, so it
   * survives a supervisor restart. Its timer keeps the process alive until stop().
   */
  startHeartbeat(intervalS, status) {
    const s = intervalS || (this.hello && this.hello.heartbeat_s) || 10;
    const beat = () => { this.heartbeat(status).catch(() => {}); };
    const timer = setInterval(beat, s * 1000);
    const helper = { stop: () => { clearInterval(timer); this._heartbeats.delete(helper); } };
    this._heartbeats.add(helper);
    beat();
    return helper;
  }

  /** agent, version, uid, device_id, state, trust, policy_version */
  whoami() {
    return this._call('whoami');
  }

  /** The effective grant and budgets (memory_bytes, ..., channels, energy, runtime). */
  config() {
    return this._call('config');
  }

  /** Appends to the outbox; resolves `seq` once the record is on disk. */
  async outboxPut(topic, data) {
    return (await this._call('outbox_put', { topic, data })).seq;
  }

  /** Presents a grant token (an object or its JSON text); resolves { capability, not_after }. */
  requestCapability(token) {
    if (typeof token === 'string' || Buffer.isBuffer(token)) token = JSON.parse(String(token));
    return this._call('request_capability', { token });
  }

  /** A message along a declared channel; resolves { delivered } or { queued }. */
  send(to, topic, data) {
    return this._call('send', { to, topic, data });
  }

  /**
   * The next message { from, topic, data } in arrival order, or null after `timeoutMs`
   * (no timeout: wait as long as it takes). Connects first if the connection is down.
   */
  async receive(timeoutMs) {
    if (!this._messages.length) await this._ensure();
    if (this._messages.length) return this._messages.shift();
    return new Promise((resolve) => {
      const w = { resolve, timer: null };
      if (timeoutMs != null) {
        w.timer = setTimeout(() => {
          this._waiters.splice(this._waiters.indexOf(w), 1);
          resolve(null);
        }, timeoutMs);
      }
      this._waiters.push(w);
    });
  }

  /** Closes the connection for good: stops heartbeats, fails calls in flight, ends receives with null. */
  close() {
    this._closed = true;
    for (const h of [...this._heartbeats]) h.stop();
    for (const w of this._waiters.splice(0)) {
      clearTimeout(w.timer);
      w.resolve(null);
    }
    if (this._sock) this._sock.destroy();
  }
}

/** Opens the socket (default $NANOCLAW_SOCKET, else /run/nanoclaw.sock) and says hello. */
async function connect(path) {
  const client = new Client(path);
  await client._ensure();
  return client;
}

module.exports = {
  connect,
  Client,
  DEFAULT_SOCKET,
  SupervisorError,
  BadRequest,
  Denied,
  Unavailable,
  LimitExceeded,
  Disconnected,
  TimeoutError,
};
