"""A client for the nanoclaw agent socket (docs/AGENT_API.md), in one stdlib-only module.

The socket speaks newline-delimited JSON, which any agent can write by hand; this module does
the parts that are easy to get wrong: matching answers to calls by id while event lines arrive
in between, typed errors, a timeout on every call, reconnecting (and saying hello again) after
the supervisor restarts, and a background heartbeat. Copy it next to your agent.

    import nanoclaw_agent as nanoclaw
    c = nanoclaw.connect()              # $NANOCLAW_SOCKET or /run/nanoclaw.sock
    c.start_heartbeat()
    c.outbox_put("telemetry", {"celsius": 21.5})
    msg = c.receive(timeout_s=5)        # Message(sender, topic, data) or None
"""

from __future__ import annotations

import json
import os
import queue
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Deque, Dict, List, Optional

__all__ = [
    "connect", "Client", "HeartbeatHandle",
    "Hello", "Whoami", "Config", "Channels", "Energy", "Grant", "Sent", "Message",
    "SupervisorError", "BadRequest", "Denied", "Unavailable", "LimitExceeded", "Disconnected",
    "DEFAULT_SOCKET", "PROTOCOL", "CALL_TIMEOUT_S", "MAX_LINE",
]

DEFAULT_SOCKET = "/run/nanoclaw.sock"
PROTOCOL = 1
CALL_TIMEOUT_S = 10.0
MAX_LINE = 64 * 1024


# --- errors ---------------------------------------------------------------------------------

class SupervisorError(Exception):
    """The supervisor refused a request. `code` is the answer's code (None if it had none),
    `reason` its `error` text, unchanged; str(e) is the reason."""

    def __init__(self, code: Optional[str], reason: str):
        super().__init__(reason)
        self.code = code
        self.reason = reason


class BadRequest(SupervisorError):
    """code `bad_request`: the request itself is wrong (a bad topic, an unknown field...)."""


class Denied(SupervisorError):
    """code `denied`: the policy does not allow it (no channel, a grant token refused)."""


class Unavailable(SupervisorError):
    """code `unavailable`: the supervisor cannot do it now (outbox full, receiver's queue full)."""


class LimitExceeded(SupervisorError):
    """code `limit`: a socket limit was crossed; the supervisor closes the connection."""


class Disconnected(ConnectionError):
    """No connection: the socket is missing or the connection dropped (calls in flight fail
    with this; the next call reconnects), or the client was closed."""


_CODES = {"bad_request": BadRequest, "denied": Denied, "unavailable": Unavailable,
          "limit": LimitExceeded}


def _error(answer: Dict[str, Any]) -> SupervisorError:
    code = answer.get("code")
    return _CODES.get(code, SupervisorError)(code, answer.get("error", ""))


# --- return values --------------------------------------------------------------------------
# Each has the documented fields (None when the supervisor left one out) and `raw`, the whole
# answer, for fields a newer supervisor adds.

@dataclass
class Hello:
    agent: str
    version: str
    device_id: str
    protocol: int
    heartbeat_s: Optional[int]
    raw: Dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass
class Whoami:
    agent: str
    version: str
    uid: int
    device_id: str
    state: str
    trust: int
    policy_version: int
    raw: Dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass
class Channels:
    send: List[Dict[str, str]]     # [{"to": ..., "topic": ...}], in the policy's order
    receive: List[Dict[str, str]]  # [{"from": ..., "topic": ...}]


@dataclass
class Energy:
    budget_mwh: int
    window_s: int
    used_mwh: float


@dataclass
class Config:
    memory_bytes: Optional[int]
    cpus: Optional[float]
    pids: Optional[int]
    scratch_bytes: Optional[int]
    network: Optional[List[str]]
    grantable: List[str]
    grants: List[Dict[str, Any]]   # [{"capability": ..., "not_after": ...}]
    channels: Channels
    heartbeat_s: Optional[int]
    policy_version: int
    energy: Optional[Energy]       # None when the policy sets no energy budget
    runtime: Optional[str]
    raw: Dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass
class Grant:
    capability: str
    not_after: int  # seconds since the epoch
    raw: Dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass
class Sent:
    delivered: int          # connections of the receiver it reached
    queued: Optional[int]   # its place in the receiver's queue when none was connected
    raw: Dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass
class Message:
    sender: str  # the event's "from"
    topic: str
    data: Any


def _make(cls, answer: Dict[str, Any], **given: Any):
    names = [f.name for f in fields(cls) if f.name != "raw" and f.name not in given]
    return cls(**{n: answer.get(n) for n in names}, **given, raw=answer)


# --- the connection -------------------------------------------------------------------------

class _Conn:
    """One socket and its reader thread; answers go to the waiting call by id."""

    def __init__(self, sock: socket.socket, on_message: Callable[[Message], None],
                 on_close: Callable[[], None]):
        self.sock = sock
        self.alive = True
        self.why = "the connection to the supervisor was closed"
        self._on_message = on_message
        self._on_close = on_close
        self._lock = threading.Lock()
        self._write = threading.Lock()
        self._pending: Dict[int, queue.SimpleQueue] = {}
        threading.Thread(target=self._read, name="nanoclaw-reader", daemon=True).start()

    def call(self, rid: int, line: bytes, timeout_s: float) -> Dict[str, Any]:
        answer: queue.SimpleQueue = queue.SimpleQueue()
        with self._lock:
            if not self.alive:
                raise Disconnected(self.why)
            self._pending[rid] = answer
        try:
            with self._write:
                self.sock.sendall(line)
        except OSError as e:
            self.drop(f"writing to the supervisor failed: {e}")
        try:
            got = answer.get(timeout=timeout_s)
        except queue.Empty:
            with self._lock:
                self._pending.pop(rid, None)
            raise TimeoutError(f"no answer from the supervisor in {timeout_s:g} s") from None
        if got is None:
            raise Disconnected(self.why)
        return got

    def drop(self, why: str) -> None:
        with self._lock:
            if not self.alive:
                return
            self.alive, self.why = False, why
            pending, self._pending = self._pending, {}
        for answer in pending.values():
            answer.put(None)
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the reader
        except OSError:
            pass
        self._on_close()

    def _read(self) -> None:
        why = "the supervisor closed the connection"
        reader = self.sock.makefile("rb")
        try:
            for line in reader:
                try:
                    msg = json.loads(line)
                except ValueError:
                    continue
                if not isinstance(msg, dict):
                    continue
                if "event" in msg:
                    if msg["event"] == "message":
                        self._on_message(Message(msg.get("from"), msg.get("topic"),
                                                 msg.get("data")))
                    continue
                if "id" not in msg:
                    if msg.get("ok") is False:  # a socket limit; the supervisor closes
                        why = f"the supervisor closed the connection: {msg.get('error')}"
                        break
                    continue
                with self._lock:
                    answer = self._pending.pop(msg["id"], None)
                if answer is not None:
                    answer.put(msg)
        except (OSError, ValueError):
            pass
        finally:
            self.drop(why)
            reader.close()
            self.sock.close()


# --- the client -----------------------------------------------------------------------------

class Client:
    """One connection to the supervisor; safe to use from several threads at once."""

    def __init__(self, path: Optional[str] = None, timeout_s: float = CALL_TIMEOUT_S):
        self.path = path or os.environ.get("NANOCLAW_SOCKET") or DEFAULT_SOCKET
        self.timeout_s = timeout_s
        self.hello: Optional[Hello] = None  # the latest hello answer
        self._conn: Optional[_Conn] = None
        self._closed = False
        self._connecting = threading.Lock()
        self._ids_lock = threading.Lock()
        self._next_id = 0
        self._inbox: Deque[Message] = deque()
        self._cond = threading.Condition()

    # The calls.

    def heartbeat(self, status: Optional[str] = None) -> Optional[int]:
        """One heartbeat; returns `due_by_ms`, the next one's deadline (None without health)."""
        extra = {} if status is None else {"status": status}
        return self._call("heartbeat", **extra).get("due_by_ms")

    def start_heartbeat(self, interval_s: Optional[float] = None,
                        status: Optional[str] = None) -> "HeartbeatHandle":
        """Heartbeats every `interval_s` (default: hello's `heartbeat_s`, else 10 s) in a
        daemon thread, reconnecting as needed, until the handle's `stop()`."""
        return HeartbeatHandle(self, interval_s, status)

    def whoami(self) -> Whoami:
        return _make(Whoami, self._call("whoami"))

    def config(self) -> Config:
        a = self._call("config")
        ch = a.get("channels") or {}
        energy = a.get("energy")
        return _make(Config, a, grantable=a.get("grantable") or [], grants=a.get("grants") or [],
                     channels=Channels(ch.get("send") or [], ch.get("receive") or []),
                     energy=_make_energy(energy) if isinstance(energy, dict) else None)

    def outbox_put(self, topic: str, data: Any) -> int:
        """Appends to the store-and-forward outbox; returns `seq` once it is on disk."""
        return self._call("outbox_put", topic=topic, data=data)["seq"]

    def request_capability(self, token: Any) -> Grant:
        """Presents a grant token: a dict, or its JSON text (str or bytes)."""
        if isinstance(token, (str, bytes, bytearray)):
            token = json.loads(token)
        return _make(Grant, self._call("request_capability", token=token))

    def send(self, to: str, topic: str, data: Any) -> Sent:
        """A message to agent `to` along a channel the policy declares."""
        return _make(Sent, self._call("send", to=to, topic=topic, data=data))

    def receive(self, timeout_s: Optional[float] = None) -> Optional[Message]:
        """The next message in arrival order; None once `timeout_s` passes (None: no limit).
        Raises Disconnected if the connection drops while it waits with nothing queued."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._cond:
            if self._inbox:
                return self._inbox.popleft()
        self._ensure()
        with self._cond:
            while not self._inbox:
                conn = self._conn
                if self._closed or conn is None or not conn.alive:
                    raise Disconnected(conn.why if conn else "not connected")
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return None
                self._cond.wait(left)
            return self._inbox.popleft()

    def close(self) -> None:
        """Closes the connection; later calls raise Disconnected."""
        self._closed = True
        conn = self._conn
        if conn is not None:
            conn.drop("the client was closed")

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # The plumbing.

    def _call(self, op: str, **fields: Any) -> Dict[str, Any]:
        return self._request(self._ensure(), op, fields)

    def _request(self, conn: _Conn, op: str, fields: Dict[str, Any]) -> Dict[str, Any]:
        with self._ids_lock:
            self._next_id += 1
            rid = self._next_id
        line = (json.dumps({"op": op, "id": rid, **fields}, separators=(",", ":")) + "\n").encode()
        if len(line) > MAX_LINE:
            raise BadRequest("bad_request", f"the request is {len(line)} bytes; "
                                            f"lines are at most {MAX_LINE}")
        answer = conn.call(rid, line, self.timeout_s)
        if answer.get("ok") is not True:
            raise _error(answer)
        return answer

    def _ensure(self) -> _Conn:
        """The live connection, after opening one and saying hello if there is none."""
        conn = self._conn
        if conn is not None and conn.alive and not self._closed:
            return conn
        with self._connecting:
            if self._closed:
                raise Disconnected("the client was closed")
            conn = self._conn
            if conn is not None and conn.alive:
                return conn
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(self.timeout_s)
                sock.connect(self.path)
                sock.settimeout(None)
            except OSError as e:
                sock.close()
                raise Disconnected(f"cannot connect to {self.path}: {e}") from e
            conn = _Conn(sock, self._on_message, self._on_close)
            try:
                self.hello = _make(Hello, self._request(conn, "hello", {"protocol": PROTOCOL}))
            except BaseException:
                conn.drop("hello failed")
                raise
            self._conn = conn
            return conn

    def _on_message(self, msg: Message) -> None:
        with self._cond:
            self._inbox.append(msg)
            self._cond.notify_all()

    def _on_close(self) -> None:
        with self._cond:
            self._cond.notify_all()


def _make_energy(e: Dict[str, Any]) -> Energy:
    return Energy(e.get("budget_mwh"), e.get("window_s"), e.get("used_mwh"))


class HeartbeatHandle:
    """The background heartbeat of `Client.start_heartbeat`; `stop()` ends it."""

    def __init__(self, client: Client, interval_s: Optional[float], status: Optional[str]):
        self._client, self._interval_s, self._status = client, interval_s, status
        self._stopped = threading.Event()
        self.last_error: Optional[Exception] = None  # the latest failure, None after a success
        self._thread = threading.Thread(target=self._run, name="nanoclaw-heartbeat", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopped.is_set() and not self._client._closed:
            interval = self._interval_s or (self._client.hello and self._client.hello.heartbeat_s)
            interval = float(interval or 10.0)
            try:
                self._client.heartbeat(self._status)
                self.last_error = None
            except (SupervisorError, OSError) as e:  # OSError: Disconnected, TimeoutError
                self.last_error = e
                interval = min(interval, 1.0)  # retry soon: the supervisor may be restarting
            self._stopped.wait(interval)

    def stop(self) -> None:
        """Stops the heartbeats; none is sent after this returns."""
        self._stopped.set()
        if threading.current_thread() is not self._thread:
            self._thread.join()


def connect(path: Optional[str] = None) -> Client:
    """Connects to the agent socket (`path`, else $NANOCLAW_SOCKET, else /run/nanoclaw.sock)
    and says hello; the answer is in `client.hello`. Raises Disconnected without a socket."""
    client = Client(path)
    client._ensure()
    return client
