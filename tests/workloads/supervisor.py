"""supervisor: starts DAEMON (argv[1]) with its log pipe on fd 3, as a
service manager does, and copies each line the daemon logs to stdout as
"first: LINE". It also holds a second pipe, both ends: a daemon restored
elsewhere can be given its write end (by opening /proc/PID/fd/N, N printed
at start); lines read from it are copied as "second: LINE". Reaps the
daemon when it ends ("first: exited STATUS") and "first: EOF" when no one
writes to the first pipe any more. Runs until killed."""

import os
import select
import subprocess
import sys

first_r, first_w = os.pipe()
second_r, second_w = os.pipe()


def log_on_fd3():
    os.dup2(first_w, 3)


daemon = subprocess.Popen(
    [sys.argv[1]],
    preexec_fn=log_on_fd3,
    close_fds=False,
    stdin=subprocess.DEVNULL,
    stdout=subprocess.DEVNULL,
)
os.close(first_w)
print(f"ready daemon {daemon.pid} second-fd {second_w}", flush=True)

names = {first_r: "first", second_r: "second"}
partial = {first_r: b"", second_r: b""}
reaped = False
while True:
    readable, _, _ = select.select(list(names), [], [], 0.05)
    for fd in readable:
        chunk = os.read(fd, 65536)
        if not chunk:
            print(f"{names[fd]}: EOF", flush=True)
            del names[fd]
            continue
        lines = (partial[fd] + chunk).split(b"\n")
        partial[fd] = lines.pop()
        for line in lines:
            print(f"{names[fd]}: {line.decode()}", flush=True)
    if not reaped and daemon.poll() is not None:
        reaped = True
        print(f"first: exited {daemon.returncode}", flush=True)
