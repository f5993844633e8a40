"""An HTTP client that keeps ONE connection (keep-alive) and asks GET /pid
every few milliseconds, forever.

    keepalive_client.py ADDR PORT OUT [INTERVAL_MS]

Appends to OUT one line per request: "ok N BODY LOCAL_PORT MICROSECONDS"
(the request's number, the answer, its own port: the same connection
throughout, and how long the answer took), or "FAIL N ERROR" and exits 1
on the first failure. It never opens a second connection (auto_open off).
"""
import http.client
import sys
import time

addr, port, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
interval = float(sys.argv[4]) / 1000 if len(sys.argv) > 4 else 0.005

conn = http.client.HTTPConnection(addr, port, timeout=30)
conn.connect()
conn.auto_open = 0
n = 0
with open(out, "a", buffering=1) as log:
    while True:
        n += 1
        t0 = time.monotonic()
        try:
            conn.request("GET", "/pid")
            answer = conn.getresponse()
            body = answer.read().decode().strip()
            if answer.status != 200:
                raise RuntimeError(f"status {answer.status}")
            local = conn.sock.getsockname()[1]
        except Exception as e:  # noqa: BLE001 - every failure is the finding
            log.write(f"FAIL {n} {e!r}\n")
            sys.exit(1)
        took = int((time.monotonic() - t0) * 1e6)
        log.write(f"ok {n} {body} {local} {took}\n")
        time.sleep(interval)
