"""An HTTP client that keeps ONE connection (keep-alive) and asks GET /pid
every few milliseconds, forever.

    keepalive_client.py ADDR PORT OUT [INTERVAL_MS [memcached]]

Appends to OUT one line per request: "ok N BODY LOCAL_PORT MICROSECONDS"
(the request's number, the answer, its own port: the same connection
throughout, and how long the answer took), or "FAIL N ERROR" and exits 1
on the first failure. It never opens a second connection (auto_open off).

With "memcached" it speaks memcached's text protocol instead: it sets a
counter to 0, then each request is "incr" of it, whose answer must be N
(no increment lost or done twice); BODY is "memcached".
"""
import http.client
import socket
import sys
import time

addr, port, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
interval = float(sys.argv[4]) / 1000 if len(sys.argv) > 4 else 0.005


def keep_asking(request):
    """Call request(n) for n = 1, 2, ... every `interval`, logging each
    answer's (body, local port) and how long it took, or the failure."""
    n = 0
    with open(out, "a", buffering=1) as log:
        while True:
            n += 1
            t0 = time.monotonic()
            try:
                body, local = request(n)
            except Exception as e:  # noqa: BLE001 - every failure is the finding
                log.write(f"FAIL {n} {e!r}\n")
                sys.exit(1)
            took = int((time.monotonic() - t0) * 1e6)
            log.write(f"ok {n} {body} {local} {took}\n")
            time.sleep(interval)


def memcached_client():
    sock = socket.create_connection((addr, port), timeout=30)
    reader = sock.makefile("rb")
    local = sock.getsockname()[1]

    def ask(request):
        sock.sendall(request)
        return reader.readline().decode().strip()

    if ask(b"set tern-seq 0 0 1\r\n0\r\n") != "STORED":
        with open(out, "a") as log:
            log.write("FAIL 0 set\n")
        sys.exit(1)

    def incr(n):
        got = ask(b"incr tern-seq 1\r\n")
        if got != str(n):
            raise RuntimeError(f"incr gave {got!r}, not {n}")
        return "memcached", local

    keep_asking(incr)


def http_client():
    conn = http.client.HTTPConnection(addr, port, timeout=30)
    conn.connect()
    conn.auto_open = 0

    def get(_n):
        conn.request("GET", "/pid")
        answer = conn.getresponse()
        body = answer.read().decode().strip()
        if answer.status != 200:
            raise RuntimeError(f"status {answer.status}")
        return body, conn.sock.getsockname()[1]

    keep_asking(get)


if len(sys.argv) > 5 and sys.argv[5] == "memcached":
    memcached_client()
else:
    http_client()
