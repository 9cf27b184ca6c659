"""The round trip program (sdk/CONFORMANCE.md): 90 heartbeats one after another, then one
line with the latency of a call as the caller sees it."""

import math
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import nanoclaw_agent as nanoclaw  # noqa: E402

N = 90  # inside the socket's burst of 100


def main():
    c = nanoclaw.connect()
    took = []
    for _ in range(N):
        start = time.perf_counter_ns()
        c.heartbeat()
        took.append((time.perf_counter_ns() - start) // 1000)
    c.close()
    took.sort()

    def pct(p):  # nearest rank
        return took[max(0, math.ceil(p / 100 * N) - 1)]
    lang = os.environ.get("LANG_NAME", "python")
    print(f"roundtrip lang={lang} n={N} p50_us={pct(50)} p99_us={pct(99)} "
          f"mean_us={sum(took) // N}", flush=True)


if __name__ == "__main__":
    main()
