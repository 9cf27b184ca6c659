//! One connection to the agent socket, shared by every thread of the agent.
//!
//! Calls write their request under a lock and then wait for the answer with their own `id`,
//! so several can be in flight at once; a reader thread per connection sorts the incoming
//! lines into answers (by `id`) and messages (queued for [`Client::receive`]), because
//! message events arrive at any time, between answers. Each connection has a generation
//! number: when one drops, only the calls sent on it fail, and the next call opens a new one
//! and says `hello` again (the supervisor may have restarted).

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::error::{Code, Error, Result};
use crate::types::{Config, Grant, Hello, Message, Sent, Whoami};

/// Where the socket is inside the sandbox.
pub const DEFAULT_SOCKET: &str = "/run/nanoclaw.sock";
/// The environment variable that overrides [`DEFAULT_SOCKET`].
pub const SOCKET_ENV: &str = "NANOCLAW_SOCKET";
/// How long a call waits for its answer.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// The protocol this SDK speaks.
const PROTOCOL: u32 = 1;
/// Heartbeat interval when neither the caller nor the manifest gives one.
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(10);
/// A failed heartbeat is retried this soon (or at the interval, if shorter).
const HEARTBEAT_RETRY: Duration = Duration::from_secs(1);
/// Messages kept for `receive`; beyond this the oldest is dropped, so an agent that never
/// receives cannot grow without bound.
const MAX_QUEUED: usize = 1024;

/// A connection to the supervisor. Calls take `&self` and may come from several threads at
/// once; dropping the client (or [`Client::close`]) closes the connection.
pub struct Client {
    conn: Arc<Conn>,
    hello: Hello,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("path", &self.conn.path)
            .field("hello", &self.hello)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Opens the socket at `path` (`None`: `$NANOCLAW_SOCKET`, else `/run/nanoclaw.sock`)
    /// and says `hello`. A missing socket is [`Error::Disconnected`].
    pub fn connect(path: Option<&Path>) -> Result<Self> {
        let path = match path {
            Some(p) => p.to_path_buf(),
            None => std::env::var_os(SOCKET_ENV)
                .filter(|p| !p.is_empty())
                .map_or_else(|| PathBuf::from(DEFAULT_SOCKET), PathBuf::from),
        };
        let conn = Arc::new(Conn {
            path,
            next_id: AtomicU64::new(1),
            link: Mutex::new(Link::default()),
            shared: Arc::new(Shared::default()),
        });
        let hello = conn.open(&mut lock(&conn.link))?;
        Ok(Self { conn, hello })
    }

    /// The answer to the first `hello` (a reconnect says hello again but keeps this one).
    pub fn hello(&self) -> &Hello {
        &self.hello
    }

    /// Sends one heartbeat; returns the next one's deadline (ms since the epoch), or `None`
    /// when the manifest asks for none.
    pub fn heartbeat(&self, status: Option<&str>) -> Result<Option<u64>> {
        self.conn.heartbeat(status)
    }

    /// Keeps heartbeats going on a thread: one now, then every `interval` (default: the
    /// manifest's `heartbeat_s`, else 10 s), reconnecting if the supervisor restarts, until
    /// [`Heartbeat::stop`], the handle is dropped, or the client is closed.
    ///
    /// Panics if the OS cannot start a thread, as [`std::thread::spawn`] does.
    pub fn start_heartbeat(&self, interval: Option<Duration>, status: Option<String>) -> Heartbeat {
        let interval = interval.unwrap_or_else(|| {
            self.hello
                .heartbeat_s
                .filter(|&s| s > 0)
                .map_or(DEFAULT_HEARTBEAT, Duration::from_secs)
        });
        let conn = Arc::clone(&self.conn);
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = thread::spawn(move || {
            while !conn.shared.closed() {
                let wait = match conn.heartbeat(status.as_deref()) {
                    Ok(_) => interval,
                    Err(_) => interval.min(HEARTBEAT_RETRY),
                };
                match stopped.recv_timeout(wait) {
                    Err(RecvTimeoutError::Timeout) => {}
                    Ok(()) | Err(RecvTimeoutError::Disconnected) => break,
                }
            }
        });
        Heartbeat {
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Who the supervisor thinks this agent is.
    pub fn whoami(&self) -> Result<Whoami> {
        parse("whoami", self.conn.call("whoami", Map::new())?)
    }

    /// The effective grant and budgets.
    pub fn config(&self) -> Result<Config> {
        parse("config", self.conn.call("config", Map::new())?)
    }

    /// Appends `data` under `topic` to the store-and-forward outbox; returns its `seq` once
    /// it is on disk.
    pub fn outbox_put<T: Serialize + ?Sized>(&self, topic: &str, data: &T) -> Result<u64> {
        let mut fields = Map::new();
        fields.insert("topic".into(), topic.into());
        fields.insert("data".into(), to_json(data)?);
        let answer = self.conn.call("outbox_put", fields)?;
        field(&answer, "outbox_put", "seq", Value::as_u64)
    }

    /// Presents a grant token (the JSON object `nanoclaw grant sign` makes).
    pub fn request_capability(&self, token: &Value) -> Result<Grant> {
        let mut fields = Map::new();
        fields.insert("token".into(), token.clone());
        parse(
            "request_capability",
            self.conn.call("request_capability", fields)?,
        )
    }

    /// Presents a grant token given as its JSON text. Text that is not JSON is sent as a
    /// string, so the supervisor's refusal says what is wrong with it.
    pub fn request_capability_text(&self, token: &str) -> Result<Grant> {
        let token = serde_json::from_str(token).unwrap_or_else(|_| Value::from(token));
        self.request_capability(&token)
    }

    /// Sends a message to agent `to` along a channel the policy declares.
    pub fn send<T: Serialize + ?Sized>(&self, to: &str, topic: &str, data: &T) -> Result<Sent> {
        let mut fields = Map::new();
        fields.insert("to".into(), to.into());
        fields.insert("topic".into(), topic.into());
        fields.insert("data".into(), to_json(data)?);
        parse("send", self.conn.call("send", fields)?)
    }

    /// The next message, in arrival order; `None` once `timeout` passes (`None`: wait for
    /// as long as it takes). A dropped connection is reopened while waiting; if that fails,
    /// [`Error::Disconnected`].
    pub fn receive(&self, timeout: Option<Duration>) -> Result<Option<Message>> {
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        let shared = &self.conn.shared;
        loop {
            {
                let mut st = lock(&shared.state);
                loop {
                    if let Some(m) = st.messages.pop_front() {
                        return Ok(Some(m));
                    }
                    if st.closed {
                        return Err(closed());
                    }
                    if !st.up {
                        break;
                    }
                    st = match deadline {
                        None => shared
                            .changed
                            .wait(st)
                            .unwrap_or_else(PoisonError::into_inner),
                        Some(d) => {
                            let now = Instant::now();
                            if now >= d {
                                return Ok(None);
                            }
                            wait_timeout(&shared.changed, st, d - now)
                        }
                    };
                }
            }
            self.conn.ensure_open(&mut lock(&self.conn.link))?;
        }
    }

    /// Closes the connection. Calls in flight and later calls fail with
    /// [`Error::Disconnected`]; a heartbeat helper stops at its next beat.
    pub fn close(&self) {
        self.conn.close();
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.conn.close();
    }
}

/// The background heartbeat from [`Client::start_heartbeat`]; stops when dropped.
#[derive(Debug)]
pub struct Heartbeat {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Heartbeat {
    /// Stops the heartbeats and waits for the thread (at most one call in flight, ≤ 10 s).
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            // A panic in the thread has nothing left to report to.
            let _ = t.join();
        }
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.halt();
    }
}

/// The connection machinery, shared by the client and its heartbeat thread.
struct Conn {
    path: PathBuf,
    next_id: AtomicU64,
    /// The current socket (write side). Held while writing one request line, and while
    /// reconnecting, so requests go out whole and one reconnect happens at a time.
    link: Mutex<Link>,
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Link {
    stream: Option<UnixStream>,
    generation: u64,
}

impl Drop for Link {
    fn drop(&mut self) {
        // The reader holds a clone of the socket: shutting down (not just dropping ours)
        // ends it and closes the connection.
        if let Some(s) = self.stream.take() {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

/// What the reader threads and the callers share.
#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    /// Signalled on every answer, message, lost connection and close.
    changed: Condvar,
}

#[derive(Default)]
struct State {
    /// The newest connection's generation, and whether it is still up.
    generation: u64,
    up: bool,
    closed: bool,
    pending: HashMap<u64, Pending>,
    messages: VecDeque<Message>,
    /// An error line without an `id` (a socket limit crossed) on that generation's
    /// connection: the supervisor closes it next, and this is why.
    refusal: Option<(u64, String)>,
}

struct Pending {
    generation: u64,
    answer: Option<Result<Map<String, Value>>>,
}

impl Conn {
    fn heartbeat(&self, status: Option<&str>) -> Result<Option<u64>> {
        let mut fields = Map::new();
        if let Some(s) = status {
            fields.insert("status".into(), s.into());
        }
        let answer = self.call("heartbeat", fields)?;
        match answer.get("due_by_ms") {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_u64()
                .map(Some)
                .ok_or_else(|| Error::Protocol(format!("heartbeat: due_by_ms is {v}"))),
        }
    }

    /// One request and its answer (the fields of an `ok` answer).
    fn call(&self, op: &str, fields: Map<String, Value>) -> Result<Map<String, Value>> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let line = request(op, id, fields);
        let mut link = lock(&self.link);
        let generation = self.ensure_open(&mut link)?;
        if self.post(&mut link, generation, id, &line).is_err() {
            // The request did not go out (the connection had just dropped), so sending it
            // on a new one cannot make it happen twice.
            let generation = self.ensure_open(&mut link)?;
            self.post(&mut link, generation, id, &line)?;
        }
        drop(link);
        self.wait(id)
    }

    /// The generation of a live connection, opening a new one if there is none.
    fn ensure_open(&self, link: &mut Link) -> Result<u64> {
        {
            let st = lock(&self.shared.state);
            if st.closed {
                return Err(closed());
            }
            if link.stream.is_some() && st.up && st.generation == link.generation {
                return Ok(link.generation);
            }
        }
        self.open(link)?;
        Ok(link.generation)
    }

    /// Connects, starts the reader and says `hello`.
    fn open(&self, link: &mut Link) -> Result<Hello> {
        if let Some(old) = link.stream.take() {
            let _ = old.shutdown(Shutdown::Both);
        }
        let stream = UnixStream::connect(&self.path).map_err(|e| {
            Error::Disconnected(format!("cannot connect to {}: {e}", self.path.display()))
        })?;
        stream.set_write_timeout(Some(ANSWER_TIMEOUT))?;
        let reading = stream.try_clone()?;
        let generation = {
            let mut st = lock(&self.shared.state);
            if st.closed {
                return Err(closed());
            }
            st.generation += 1;
            st.up = true;
            st.generation
        };
        let shared = Arc::clone(&self.shared);
        let started = thread::Builder::new()
            .name("nanoclaw-agent-reader".into())
            .spawn(move || read_loop(&shared, generation, reading));
        if let Err(e) = started {
            self.shared.lost(generation, "no reader thread".into());
            return Err(Error::Io(e));
        }
        link.stream = Some(stream);
        link.generation = generation;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut fields = Map::new();
        fields.insert("protocol".into(), PROTOCOL.into());
        let hello = self
            .post(link, generation, id, &request("hello", id, fields))
            .and_then(|()| self.wait(id))
            .and_then(|answer| parse::<Hello>("hello", answer));
        if hello.is_err()
            && let Some(s) = link.stream.take()
        {
            // Without a hello the connection is no use; the next call starts over.
            let _ = s.shutdown(Shutdown::Both);
        }
        hello
    }

    /// Registers `id` as waiting and writes its request line.
    fn post(&self, link: &mut Link, generation: u64, id: u64, line: &[u8]) -> Result<()> {
        {
            let mut st = lock(&self.shared.state);
            if !(st.up && st.generation == generation) {
                return Err(Error::Disconnected("the connection was lost".into()));
            }
            st.pending.insert(
                id,
                Pending {
                    generation,
                    answer: None,
                },
            );
        }
        let written = match &link.stream {
            Some(s) => {
                let mut w: &UnixStream = s;
                w.write_all(line)
            }
            None => Err(std::io::ErrorKind::NotConnected.into()),
        };
        if let Err(e) = written {
            lock(&self.shared.state).pending.remove(&id);
            if let Some(s) = link.stream.take() {
                let _ = s.shutdown(Shutdown::Both);
            }
            let why = format!("cannot write to the socket: {e}");
            self.shared.lost(generation, why.clone());
            return Err(Error::Disconnected(why));
        }
        Ok(())
    }

    /// Waits for the answer to `id`, at most [`ANSWER_TIMEOUT`].
    fn wait(&self, id: u64) -> Result<Map<String, Value>> {
        let deadline = Instant::now() + ANSWER_TIMEOUT;
        let mut st = lock(&self.shared.state);
        loop {
            match st.pending.get_mut(&id) {
                None => return Err(Error::Disconnected("the call was abandoned".into())),
                Some(p) => {
                    if let Some(answer) = p.answer.take() {
                        st.pending.remove(&id);
                        return answer;
                    }
                }
            }
            if st.closed {
                st.pending.remove(&id);
                return Err(closed());
            }
            let now = Instant::now();
            if now >= deadline {
                st.pending.remove(&id);
                return Err(Error::Timeout);
            }
            st = wait_timeout(&self.shared.changed, st, deadline - now);
        }
    }

    fn close(&self) {
        {
            let mut st = lock(&self.shared.state);
            st.closed = true;
            st.up = false;
        }
        self.shared.changed.notify_all();
        if let Some(s) = lock(&self.link).stream.take() {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

impl Shared {
    fn closed(&self) -> bool {
        lock(&self.state).closed
    }

    /// Sorts one line from the supervisor: a message event, an answer, or an error
    /// without an `id`. Lines that are none of these are skipped.
    fn handle(&self, generation: u64, line: &[u8]) {
        let Ok(Value::Object(m)) = serde_json::from_slice::<Value>(line) else {
            return;
        };
        let mut st = lock(&self.state);
        if let Some(event) = m.get("event") {
            if event == "message"
                && let Ok(msg) = serde_json::from_value::<Message>(Value::Object(m))
            {
                if st.messages.len() >= MAX_QUEUED {
                    st.messages.pop_front();
                }
                st.messages.push_back(msg);
            }
        } else if let Some(id) = m.get("id").and_then(Value::as_u64) {
            if let Some(p) = st.pending.get_mut(&id)
                && p.generation == generation
            {
                p.answer = Some(answer(m));
            }
        } else if m.get("ok") == Some(&Value::Bool(false)) {
            let reason = m.get("error").and_then(Value::as_str).unwrap_or_default();
            st.refusal = Some((generation, reason.to_owned()));
        } else {
            return;
        }
        drop(st);
        self.changed.notify_all();
    }

    /// The connection of `generation` is gone: its calls in flight fail.
    fn lost(&self, generation: u64, why: String) {
        let mut st = lock(&self.state);
        if st.generation == generation {
            st.up = false;
        }
        let why = match st.refusal.take() {
            Some((g, reason)) if g == generation => format!("{why}: {reason}"),
            other => {
                st.refusal = other;
                why
            }
        };
        for p in st.pending.values_mut() {
            if p.generation == generation && p.answer.is_none() {
                p.answer = Some(Err(Error::Disconnected(why.clone())));
            }
        }
        drop(st);
        self.changed.notify_all();
    }
}

fn read_loop(shared: &Shared, generation: u64, stream: UnixStream) {
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    let why = loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) => break "the supervisor closed the connection".to_owned(),
            Ok(_) => shared.handle(generation, &line),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => break format!("cannot read from the socket: {e}"),
        }
    };
    shared.lost(generation, why);
}

/// An answer line as the call's result.
fn answer(m: Map<String, Value>) -> Result<Map<String, Value>> {
    if m.get("ok") == Some(&Value::Bool(true)) {
        return Ok(m);
    }
    Err(Error::Supervisor {
        code: Code::from_wire(m.get("code").and_then(Value::as_str)),
        reason: m
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
    })
}

fn request(op: &str, id: u64, mut fields: Map<String, Value>) -> Vec<u8> {
    fields.insert("op".into(), op.into());
    fields.insert("id".into(), id.into());
    let mut line = Value::Object(fields).to_string().into_bytes();
    line.push(b'\n');
    line
}

fn parse<T: DeserializeOwned>(op: &str, answer: Map<String, Value>) -> Result<T> {
    serde_json::from_value(Value::Object(answer)).map_err(|e| Error::Protocol(format!("{op}: {e}")))
}

fn field<T>(
    answer: &Map<String, Value>,
    op: &str,
    name: &str,
    get: impl Fn(&Value) -> Option<T>,
) -> Result<T> {
    answer
        .get(name)
        .and_then(get)
        .ok_or_else(|| Error::Protocol(format!("{op}: the answer has no valid `{name}`")))
}

fn to_json<T: Serialize + ?Sized>(data: &T) -> Result<Value> {
    serde_json::to_value(data)
        .map_err(|e| Error::Io(std::io::Error::new(std::io::ErrorKind::InvalidInput, e)))
}

fn closed() -> Error {
    Error::Disconnected("the client is closed".into())
}

/// Locks, ignoring poisoning: the state stays consistent between statements, so a panic
/// elsewhere leaves nothing half-done.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn wait_timeout<'a, T>(c: &Condvar, g: MutexGuard<'a, T>, d: Duration) -> MutexGuard<'a, T> {
    match c.wait_timeout(g, d) {
        Ok((g, _)) => g,
        Err(e) => e.into_inner().0,
    }
}
