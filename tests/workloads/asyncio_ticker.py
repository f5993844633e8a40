"""asyncio_ticker: an asyncio event loop (epoll, plus the loop's own
self-pipe, a non-blocking unix socketpair) running a periodic task that
prints "tick N" every 20 ms; a second task wakes the loop from a thread
(call_soon_threadsafe, which writes to the self-pipe) and counts how many
wake-ups arrived, printed every 10 ticks as "tick N woken W"."""

import asyncio
import threading
import time


async def main():
    loop = asyncio.get_running_loop()
    woken = 0

    def wake():
        nonlocal woken
        woken += 1

    def poker():
        while True:
            time.sleep(0.01)
            loop.call_soon_threadsafe(wake)

    threading.Thread(target=poker, daemon=True).start()
    n = 0
    while True:
        n += 1
        if n % 10 == 0:
            print(f"tick {n} woken {woken}", flush=True)
        else:
            print(f"tick {n}", flush=True)
        await asyncio.sleep(0.02)


asyncio.run(main())
