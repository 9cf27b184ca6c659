"""The conformance agent (sdk/CONFORMANCE.md): the host test runs it in a sandbox and reads
its `conformance: ` lines. Environment: LANG_NAME (for the records), PEER (default hub)."""

import os
import socket
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import nanoclaw_agent as nanoclaw  # noqa: E402

LANG_NAME = os.environ.get("LANG_NAME", "python")
PEER = os.environ.get("PEER", "hub")


def say(line):
    print(f"conformance: {line}", flush=True)


def expect(cls, call, *args):
    try:
        call(*args)
    except cls as e:
        say(f"error {e.code}: {e.reason}")
    except Exception as e:  # noqa: BLE001 - reported, not raised
        say(f"unexpected error {type(e).__name__}: {e}")
    else:
        say("unexpected success")


def tcp_connect(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=3):
            return "ok"
    except PermissionError:  # EPERM or EACCES
        return "denied"
    except OSError as e:
        return f"error {e.strerror or e}"


def none(v):
    return "none" if v is None else v


def main():
    c = nanoclaw.connect()
    say(f"hello agent={c.hello.agent} heartbeat_s={none(c.hello.heartbeat_s)}")
    hb = c.start_heartbeat()

    cfg = c.config()
    send = ",".join(f"{ch['to']}/{ch['topic']}" for ch in cfg.channels.send)
    receive = ",".join(f"{ch['from']}/{ch['topic']}" for ch in cfg.channels.receive)
    budget = cfg.energy.budget_mwh if cfg.energy else None
    say(f"config memory_bytes={none(cfg.memory_bytes)} send={send} receive={receive} "
        f"energy_budget_mwh={none(budget)} runtime={none(cfg.runtime)}")

    say(f"outbox seq={c.outbox_put('telemetry', {'lang': LANG_NAME, 'n': 1})}")
    expect(nanoclaw.BadRequest, c.outbox_put, "Bad Topic", 1)
    expect(nanoclaw.Denied, c.send, PEER, "secrets", "x")
    sent = c.send(PEER, "readings", {"lang": LANG_NAME})
    say(f"send delivered={sent.delivered} queued={none(sent.queued)}")

    say("ready")
    msg = c.receive(60)
    if msg is None:
        say("no message in 60 s")
        sys.exit(1)
    say(f"message from={msg.sender} topic={msg.topic}")

    token, port, other = msg.data["token"], msg.data["port"], msg.data["other_port"]
    grant = c.request_capability(token)
    say(f"grant capability={grant.capability} not_after={grant.not_after}")
    say(f"connect granted {tcp_connect(port)}")
    say(f"connect other {tcp_connect(other)}")
    expect(nanoclaw.Denied, c.request_capability, token)

    while time.time() <= grant.not_after + 2:
        time.sleep(min(1.0, grant.not_after + 2.05 - time.time()))
    say(f"connect expired {tcp_connect(port)}")

    hb.stop()
    say("heartbeat stopped")
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
