"""Run a program as a child whose output goes through our logging, and stop with it.

A server we do not own (llama.cpp's `llama-server`) writes its own log lines. Run
through `execve` they would skip the privacy filter on our log handler
(`shared.logs`), so instead each line of the child's stdout and stderr becomes a
log record, scrubbed like any other. SIGTERM and SIGINT are passed on to the
child, and the caller exits with the child's status. If the caller is killed
outright (SIGKILL: nothing to forward), the kernel kills the child too
(PR_SET_PDEATHSIG), so a supervisor that restarts the caller does not find
the old server still holding the port. SIGKILL, not SIGTERM: llama-server
shuts down gracefully on SIGTERM, and then it held the port for more than
2.6 s (the restarted server could not bind, a second crash) and left a request
it had just accepted without an answer until the client's 60 s timeout. Nothing
is left to log or wait for the orphan, so there is no grace to give it.

The child runs in its own process group, so each signal reaches it once, from us.
supervisord stops a program by signalling its whole group (`stopasgroup`), and a
terminal's Ctrl-C goes to the foreground group: llama-server took our forwarded
copy for a second interrupt, stopped at once and exited 1 on every `make run` stop.
"""

from __future__ import annotations

import ctypes
import logging
import signal
import subprocess
import threading
from collections.abc import Callable, Mapping, Sequence
from types import FrameType
from typing import IO

FORWARDED = (signal.SIGTERM, signal.SIGINT)
PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def _die_with_parent() -> None:
    """Runs in the child between fork and exec."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def start(argv: Sequence[str], env: Mapping[str, str], logger: logging.Logger) -> subprocess.Popen[bytes]:
    """Start `argv`; a thread logs each line it prints (at INFO) until it closes its output."""
    proc = subprocess.Popen(list(argv), env=dict(env), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, preexec_fn=_die_with_parent, process_group=0)
    assert proc.stdout is not None
    threading.Thread(target=_pump, args=(proc.stdout, logger), name="child-log", daemon=True).start()
    return proc


def forward_signals(proc: subprocess.Popen[bytes]) -> None:
    """Pass SIGTERM/SIGINT on to the child instead of dying first (the child then exits, and so do we)."""
    def handler(signum: int, frame: FrameType | None) -> None:
        if proc.poll() is None:
            proc.send_signal(signum)

    for sig in FORWARDED:
        signal.signal(sig, handler)


def exit_status(returncode: int) -> int:
    """The shell's convention: a child killed by signal N exits 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


def supervise(proc: subprocess.Popen[bytes], after_start: Callable[[], None] | None = None) -> int:
    """Forward signals, run `after_start` (e.g. warming the server) beside it, wait; the exit status."""
    forward_signals(proc)
    if after_start is not None:
        threading.Thread(target=after_start, name="after-start", daemon=True).start()
    return exit_status(proc.wait())


def _pump(stream: IO[bytes], logger: logging.Logger) -> None:
    with stream:
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip()
            if line:
                logger.info(line)
