"""dict_loop: the system python3 looping over a large dict.

Builds a dict of 200,000 int entries, then every ~10 ms rewrites 100 entries
(chosen from the tick number) while keeping an incremental checksum, and
prints "tick N checksum X". Every 16 ticks it recomputes the checksum and the
size from scratch; any mismatch prints a CORRUPT line and exits 3.
"""

import sys
import time

N = 200_000
MASK = 0xFFFFFFFF


def initial(i):
    return (i * 2654435761) & MASK


def main():
    d = {i: initial(i) for i in range(N)}
    checksum = sum(d.values())
    if checksum != sum(initial(i) for i in range(N)):
        print("CORRUPT initial checksum", flush=True)
        sys.exit(3)
    tick = 0
    while True:
        tick += 1
        for j in range(100):
            k = (tick * 7919 + j * 104729) % N
            old = d[k]
            new = (old * 1103515245 + 12345 + tick) & MASK
            d[k] = new
            checksum += new - old
        if tick % 16 == 0:
            full = sum(d.values())
            if full != checksum or len(d) != N:
                print(
                    f"CORRUPT tick {tick} checksum {checksum} recomputed {full} len {len(d)}",
                    flush=True,
                )
                sys.exit(3)
        print(f"tick {tick} checksum {checksum}", flush=True)
        time.sleep(0.01)


if __name__ == "__main__":
    main()
