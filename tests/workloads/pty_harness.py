"""pty_harness LOG -- COMMAND...: run COMMAND on a new pseudo-terminal as
its session leader (so the terminal is its controlling terminal), append
everything it prints to LOG ("PID n" first), and take orders on stdin, a
line each: "send TEXT" types TEXT and a newline, "intr" types ^C. When the
command exits, "EXIT status" is appended (128+N if killed by signal N)."""

import os
import pty
import select
import sys


def main():
    log_path = sys.argv[1]
    cmd = sys.argv[3:]
    pid, master = pty.fork()
    if pid == 0:
        # Only the terminal: nothing the harness inherited.
        os.closerange(3, os.sysconf("SC_OPEN_MAX"))
        os.execvp(cmd[0], cmd)
    log = open(log_path, "ab", buffering=0)
    log.write(f"PID {pid}\n".encode())
    stdin = sys.stdin.fileno()
    os.set_blocking(stdin, False)
    pending = b""
    status = None
    while status is None:
        ready, _, _ = select.select([master, stdin], [], [], 0.05)
        if master in ready:
            try:
                data = os.read(master, 65536)
            except OSError:
                data = b""
            if data:
                log.write(data)
        if stdin in ready:
            chunk = os.read(stdin, 4096)
            pending += chunk
            while b"\n" in pending:
                order, pending = pending.split(b"\n", 1)
                if order.startswith(b"send "):
                    os.write(master, order[5:] + b"\n")
                elif order == b"intr":
                    os.write(master, b"\x03")
        done, st = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            status = os.waitstatus_to_exitcode(st)
    # What is left on the terminal.
    while True:
        ready, _, _ = select.select([master], [], [], 0.1)
        if not ready:
            break
        try:
            data = os.read(master, 65536)
        except OSError:
            break
        if not data:
            break
        log.write(data)
    code = status if status >= 0 else 128 - status
    log.write(f"EXIT {code}\n".encode())


main()
