"""Unit tests of nanoclaw_agent against an in-process fake supervisor on a temp Unix socket."""

import json
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nanoclaw_agent as nanoclaw  # noqa: E402

CLOSE = object()  # a handler's answer that closes the connection


def ok(req, **fields):
    return {"ok": True, "id": req["id"], **fields}


class FakeSupervisor:
    """Serves the agent socket; `handler(req)` returns the lines to send back (dicts or text)
    or CLOSE. The default answers every op the way the supervisor does."""

    def __init__(self, handler=None, after_hello=()):
        self.dir = tempfile.mkdtemp(prefix="nanoclaw-test-")
        self.path = os.path.join(self.dir, "nanoclaw.sock")
        self.handler = handler or self.answer
        self.after_hello = list(after_hello)
        self.requests = []
        self.connections = 0
        self._socks = []
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(self.path)
        self._listener.listen()
        threading.Thread(target=self._accept, daemon=True).start()

    def answer(self, req):
        op = req["op"]
        if op == "hello":
            return [ok(req, agent="sensor", version="1.0.0", device_id="dev", protocol=1,
                       heartbeat_s=30)] + self.after_hello
        if op == "heartbeat":
            return [ok(req, due_by_ms=1000)]
        if op == "whoami":
            return [ok(req, agent="sensor", version="1.0.0", uid=61000, device_id="dev",
                       state="running", trust=100, policy_version=3)]
        if op == "config":
            return [ok(req, memory_bytes=16777216, cpus=0.5, pids=32, scratch_bytes=1 << 20,
                       network=[], grantable=["net:tcp:127.0.0.1:9000"], grants=[],
                       channels={"send": [{"to": "hub", "topic": "readings"}],
                                 "receive": [{"from": "hub", "topic": "*"}]},
                       heartbeat_s=30, policy_version=3,
                       energy={"budget_mwh": 500, "window_s": 3600, "used_mwh": 1.5},
                       runtime="python")]
        if op == "outbox_put":
            return [ok(req, seq=7)]
        if op == "request_capability":
            return [ok(req, capability=req["token"]["capability"], not_after=1800000000)]
        if op == "send":
            return [ok(req, delivered=1)]
        return [{"ok": False, "id": req["id"], "error": "unknown op", "code": "bad_request"}]

    def ops(self):
        return [r["op"] for r in self.requests]

    def close(self):
        self._listener.close()
        for s in self._socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        shutil.rmtree(self.dir, ignore_errors=True)

    def _accept(self):
        while True:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            self.connections += 1
            self._socks.append(sock)
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, sock):
        with sock, sock.makefile("rb") as reader:
            for line in reader:
                req = json.loads(line)
                self.requests.append(req)
                out = self.handler(req)
                if out is CLOSE:
                    break
                for o in out:
                    text = o if isinstance(o, str) else json.dumps(o)
                    sock.sendall(text.encode() + b"\n")


def event(topic, data, sender="hub"):
    return {"event": "message", "from": sender, "topic": topic, "data": data}


class SdkTest(unittest.TestCase):
    def serve(self, handler=None, **kw):
        self.sup = FakeSupervisor(handler, **kw)
        self.addCleanup(self.sup.close)
        return self.sup

    def connect(self, timeout_s=nanoclaw.CALL_TIMEOUT_S):
        c = nanoclaw.Client(self.sup.path, timeout_s=timeout_s)
        c._ensure()
        self.addCleanup(c.close)
        return c

    def test_hello_and_typed_answers(self):
        self.serve()
        c = self.connect()
        self.assertEqual(c.hello, nanoclaw.Hello("sensor", "1.0.0", "dev", 1, 30))
        self.assertEqual(self.sup.requests[0], {"op": "hello", "id": 1, "protocol": 1})
        self.assertEqual(c.heartbeat(), 1000)
        self.assertEqual(c.whoami().uid, 61000)
        cfg = c.config()
        self.assertEqual(cfg.memory_bytes, 16777216)
        self.assertEqual(cfg.channels.send, [{"to": "hub", "topic": "readings"}])
        self.assertEqual(cfg.channels.receive, [{"from": "hub", "topic": "*"}])
        self.assertEqual(cfg.energy, nanoclaw.Energy(500, 3600, 1.5))
        self.assertEqual(cfg.runtime, "python")
        self.assertEqual(c.outbox_put("telemetry", {"n": 1}), 7)
        self.assertEqual(c.send("hub", "readings", 1), nanoclaw.Sent(1, None))
        ids = [r["id"] for r in self.sup.requests]
        self.assertEqual(ids, sorted(ids))
        self.assertEqual(self.sup.requests[-2], {"op": "outbox_put", "id": ids[-2],
                                                 "topic": "telemetry", "data": {"n": 1}})

    def test_config_without_energy_or_runtime(self):
        def handler(req):
            if req["op"] == "config":
                return [ok(req, memory_bytes=1, channels={"send": [], "receive": []},
                           energy=None)]
            return self.sup.answer(req)
        self.serve(handler)
        cfg = self.connect().config()
        self.assertIsNone(cfg.energy)
        self.assertIsNone(cfg.runtime)
        self.assertEqual((cfg.grants, cfg.channels.send), ([], []))

    def test_ids_matched_with_event_interleaved(self):
        def handler(req):
            if req["op"] == "heartbeat":
                # A stale answer, an event, then the real answer.
                return [{"ok": True, "id": 999, "due_by_ms": 1},
                        event("readings", {"celsius": 21.5}),
                        ok(req, due_by_ms=42)]
            return self.sup.answer(req)
        self.serve(handler)
        c = self.connect()
        self.assertEqual(c.heartbeat("fine"), 42)
        self.assertEqual(self.sup.requests[-1]["status"], "fine")
        self.assertEqual(c.receive(1), nanoclaw.Message("hub", "readings", {"celsius": 21.5}))
        self.assertIsNone(c.receive(0))

    def test_messages_after_hello_are_received_in_order(self):
        self.serve(after_hello=[event("a", 1), event("b", 2)])
        c = self.connect()
        self.assertEqual([c.receive(1).topic, c.receive(1).topic], ["a", "b"])

    def test_error_codes_map_to_classes(self):
        reason = "no channel from sensor to hub for topic secrets in the policy\n\u00e9"
        cases = {"bad_request": nanoclaw.BadRequest, "denied": nanoclaw.Denied,
                 "unavailable": nanoclaw.Unavailable, "limit": nanoclaw.LimitExceeded,
                 "something_new": nanoclaw.SupervisorError, None: nanoclaw.SupervisorError}
        codes = iter(cases)

        def handler(req):
            if req["op"] == "send":
                answer = {"ok": False, "id": req["id"], "error": reason}
                code = next(codes)
                if code is not None:
                    answer["code"] = code
                return [answer]
            return self.sup.answer(req)
        self.serve(handler)
        c = self.connect()
        for code, cls in cases.items():
            with self.subTest(code=code):
                with self.assertRaises(nanoclaw.SupervisorError) as cm:
                    c.send("hub", "secrets", "x")
                self.assertIs(type(cm.exception), cls)
                self.assertEqual((cm.exception.code, cm.exception.reason), (code, reason))
                self.assertEqual(str(cm.exception), reason)
        self.assertEqual(self.sup.connections, 1)

    def test_error_without_id_closes_the_connection(self):
        def handler(req):
            if req["op"] == "heartbeat":
                return [{"ok": False, "error": "more than 50 messages per second",
                         "code": "limit"}]  # and the server keeps the socket open
            return self.sup.answer(req)
        self.serve(handler)
        c = self.connect()
        with self.assertRaises(nanoclaw.Disconnected) as cm:
            c.heartbeat()
        self.assertIn("more than 50 messages per second", str(cm.exception))
        self.assertEqual(c.whoami().agent, "sensor")  # reconnected
        self.assertEqual(self.sup.connections, 2)

    def test_reconnect_after_the_server_closes(self):
        closes = [True]

        def handler(req):
            if req["op"] == "whoami" and closes:
                closes.pop()
                return CLOSE  # in flight: fails with Disconnected
            return self.sup.answer(req)
        self.serve(handler)
        c = self.connect()
        with self.assertRaises(nanoclaw.Disconnected):
            c.whoami()
        self.assertEqual(c.whoami().agent, "sensor")
        self.assertEqual(self.sup.ops(), ["hello", "whoami", "hello", "whoami"])
        # A drop noticed between calls: the next call reconnects too.
        self.sup._socks[-1].shutdown(socket.SHUT_RDWR)
        deadline = time.monotonic() + 2
        while c._conn.alive and time.monotonic() < deadline:
            time.sleep(0.01)
        self.assertEqual(c.heartbeat(), 1000)
        self.assertEqual(self.sup.ops()[-2:], ["hello", "heartbeat"])
        self.assertEqual(self.sup.connections, 3)

    def test_no_socket_is_disconnected(self):
        with self.assertRaises(nanoclaw.Disconnected):
            nanoclaw.connect(os.path.join(tempfile.gettempdir(), "no-such-nanoclaw.sock"))

    def test_env_var_names_the_socket(self):
        self.serve()
        old = os.environ.get("NANOCLAW_SOCKET")
        os.environ["NANOCLAW_SOCKET"] = self.sup.path
        try:
            c = nanoclaw.connect()
            self.addCleanup(c.close)
        finally:
            if old is None:
                del os.environ["NANOCLAW_SOCKET"]
            else:
                os.environ["NANOCLAW_SOCKET"] = old
        self.assertEqual(c.hello.agent, "sensor")

    def test_receive_timeout(self):
        self.serve()
        c = self.connect()
        start = time.monotonic()
        self.assertIsNone(c.receive(timeout_s=0.2))
        self.assertGreaterEqual(time.monotonic() - start, 0.19)

    def test_call_timeout(self):
        def handler(req):
            return [] if req["op"] == "whoami" else self.sup.answer(req)
        self.serve(handler)
        c = self.connect(timeout_s=0.2)
        with self.assertRaises(TimeoutError):
            c.whoami()
        self.assertEqual(c.heartbeat(), 1000)  # the connection is still good

    def test_close(self):
        self.serve()
        c = self.connect()
        waiting = []
        t = threading.Thread(target=lambda: waiting.append(self._raises(c.receive, 5)))
        t.start()
        time.sleep(0.05)
        c.close()
        t.join(2)
        self.assertEqual(waiting, [nanoclaw.Disconnected])
        with self.assertRaises(nanoclaw.Disconnected):
            c.heartbeat()

    @staticmethod
    def _raises(f, *args):
        try:
            f(*args)
        except Exception as e:  # noqa: BLE001
            return type(e)
        return None

    def test_request_capability_text_and_object(self):
        self.serve()
        c = self.connect()
        token = {"capability": "net:tcp:127.0.0.1:9000", "agent": "sensor",
                 "not_after": 1800000000, "sig": "abc"}
        g1 = c.request_capability(json.dumps(token))
        g2 = c.request_capability(token)
        self.assertEqual(g1, nanoclaw.Grant("net:tcp:127.0.0.1:9000", 1800000000))
        self.assertEqual(g2, g1)
        sent = [r["token"] for r in self.sup.requests if r["op"] == "request_capability"]
        self.assertEqual(sent, [token, token])

    def test_concurrent_calls_answered_out_of_order(self):
        held = []
        lock = threading.Lock()

        def handler(req):
            if req["op"] != "heartbeat":
                return self.sup.answer(req)
            with lock:
                if not held:
                    held.append(req)
                    return []
                first = held.pop()
            # Answer the second request before the first.
            return [ok(req, due_by_ms=int(req["status"])), ok(first, due_by_ms=int(first["status"]))]
        self.serve(handler)
        c = self.connect()
        results = {}

        def beat(n):
            results[n] = c.heartbeat(str(n))
        threads = [threading.Thread(target=beat, args=(n,)) for n in (1, 2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(5)
        self.assertEqual(results, {1: 1, 2: 2})

    def test_heartbeat_helper_sends_periodically_and_stops(self):
        self.serve()
        c = self.connect()
        hb = c.start_heartbeat(interval_s=0.05, status="ok")
        deadline = time.monotonic() + 2
        while self.sup.ops().count("heartbeat") < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        hb.stop()
        n = self.sup.ops().count("heartbeat")
        self.assertGreaterEqual(n, 3)
        self.assertEqual(self.sup.requests[-1], {"op": "heartbeat", "id": self.sup.requests[-1]["id"],
                                                 "status": "ok"})
        time.sleep(0.15)
        self.assertEqual(self.sup.ops().count("heartbeat"), n)

    def test_heartbeat_helper_reconnects(self):
        drops = [True]

        def handler(req):
            if req["op"] == "heartbeat" and drops:
                drops.pop()
                return CLOSE
            return self.sup.answer(req)
        self.serve(handler)
        c = self.connect()
        hb = c.start_heartbeat(interval_s=0.05)
        self.addCleanup(hb.stop)
        deadline = time.monotonic() + 3
        while self.sup.ops().count("heartbeat") < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        hb.stop()
        self.assertGreaterEqual(self.sup.ops().count("heartbeat"), 3)
        self.assertEqual(self.sup.connections, 2)
        self.assertIsNone(hb.last_error)

    def test_oversized_request_is_refused_locally(self):
        self.serve()
        c = self.connect()
        with self.assertRaises(nanoclaw.BadRequest):
            c.outbox_put("telemetry", "x" * nanoclaw.MAX_LINE)
        self.assertEqual(self.sup.ops(), ["hello"])


if __name__ == "__main__":
    unittest.main()
