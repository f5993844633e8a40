"""two_threads: the system python3 running two threads besides the main one.

Threads "count-a" and "count-b" each loop forever: under their own lock they
increment their counter n and add n to their running total (so total is
always n * (n + 1) / 2), then sleep 0.5 ms. Every ~10 ms the main thread reads
both under the locks, checks each total against its counter, checks both
threads are alive, and prints
  "tick N a A b B checksum C"
where C = (total_a * 3 + total_b) mod 2**32. Any mismatch prints a CORRUPT
line and exits 3.
"""

import os
import sys
import threading
import time

MASK = 0xFFFFFFFF


class Counter:
    def __init__(self):
        self.lock = threading.Lock()
        self.n = 0
        self.total = 0

    def run(self):
        while True:
            with self.lock:
                self.n += 1
                self.total += self.n
            time.sleep(0.0005)

    def read(self):
        with self.lock:
            return self.n, self.total


def corrupt(msg):
    print(f"CORRUPT {msg}", flush=True)
    os._exit(3)


def main():
    a, b = Counter(), Counter()
    threads = [
        threading.Thread(target=a.run, name="count-a", daemon=True),
        threading.Thread(target=b.run, name="count-b", daemon=True),
    ]
    for t in threads:
        t.start()
    tick = 0
    while True:
        tick += 1
        (na, ta), (nb, tb) = a.read(), b.read()
        for name, n, t in (("a", na, ta), ("b", nb, tb)):
            if t != n * (n + 1) // 2:
                corrupt(f"tick {tick} counter {name} is {n} but its total is {t}")
        for t in threads:
            if not t.is_alive():
                corrupt(f"tick {tick} thread {t.name} is dead")
        if threading.active_count() != 3:
            corrupt(f"tick {tick} {threading.active_count()} threads alive, expected 3")
        checksum = (ta * 3 + tb) & MASK
        print(f"tick {tick} a {na} b {nb} checksum {checksum}", flush=True)
        time.sleep(0.01)


if __name__ == "__main__":
    sys.exit(main())
