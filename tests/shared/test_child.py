"""A server run through `shared.child` goes when its parent goes, even on SIGKILL, and its output is logged."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import psutil

from tests.stack import free_port

SLEEPER = "import time; print('child up', flush=True); time.sleep(300)"
# The parent runs `child.start` on [python, -c, CHILD, *ARGS]; the two are filled in by _start_parent.
PARENT = textwrap.dedent("""
    import logging, sys
    from shared import child
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(name)s %(message)s")
    proc = child.start([sys.executable, "-c", CHILD, *ARGS], {}, logging.getLogger("server"))
    print("pid", proc.pid, flush=True)
    sys.exit(child.supervise(proc))
""")


# A server that finishes gracefully on SIGTERM, as llama-server does: it would keep its port for as long as that
# takes (here: ignores SIGTERM outright).
STUBBORN = ("import signal, socket, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "s = socket.socket(); s.bind(('127.0.0.1', int(sys.argv[1]))); s.listen(); "
            "print('child up', flush=True); time.sleep(300)")


# A server that counts the stop signals it gets (llama-server stops at once on a second one) and exits with
# 10 + that count half a second after the first. Counted by the C-level wakeup fd, one byte per signal: Python's
# own handler runs once for signals that arrive together.
COUNTING = textwrap.dedent("""
    import os, signal, sys, time
    r, w = os.pipe()
    os.set_blocking(w, False)
    signal.signal(signal.SIGTERM, lambda *a: None)
    signal.set_wakeup_fd(w)
    print('child up', flush=True)
    os.read(r, 1)
    time.sleep(0.5)
    os.set_blocking(r, False)
    try:
        more = len(os.read(r, 64))
    except BlockingIOError:
        more = 0
    sys.exit(11 + more)
""")


def _start_parent(child: str = SLEEPER, *args: str) -> tuple[subprocess.Popen[str], int]:
    script = f"CHILD = {child!r}\nARGS = {list(args)!r}\n{PARENT}"
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                              cwd=os.getcwd(), env={**os.environ, "PYTHONPATH": os.getcwd()}, process_group=0)
    assert parent.stdout is not None
    line = parent.stdout.readline()
    assert line.startswith("pid "), line
    return parent, int(line.split()[1])


def _gone(pid: int, within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
            return True
        time.sleep(0.05)
    return False


def test_child_dies_when_its_parent_is_killed() -> None:
    parent, pid = _start_parent()
    try:
        assert psutil.pid_exists(pid)
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        assert _gone(pid, 5), "the server outlived its SIGKILLed parent"
    finally:
        if psutil.pid_exists(pid):
            os.kill(pid, signal.SIGKILL)


def test_a_child_that_would_linger_on_sigterm_is_gone_with_its_port_when_the_parent_is_killed() -> None:
    port = free_port()
    parent, pid = _start_parent(STUBBORN, str(port))
    try:
        assert parent.stdout is not None and parent.stdout.readline().strip() == "server child up"
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        assert _gone(pid, 2), "the server outlived its SIGKILLed parent"
        with socket.socket() as again:  # what the restarted server does first
            again.bind(("127.0.0.1", port))
    finally:
        if psutil.pid_exists(pid):
            os.kill(pid, signal.SIGKILL)


def test_sigterm_is_forwarded_and_output_logged() -> None:
    parent, pid = _start_parent()
    assert parent.stdout is not None
    assert parent.stdout.readline().strip() == "server child up"
    parent.send_signal(signal.SIGTERM)
    assert parent.wait(10) == 128 + signal.SIGTERM
    assert _gone(pid, 5)


def test_a_stop_sent_to_the_parents_whole_group_reaches_the_child_once() -> None:
    """As supervisord stops a program (`stopasgroup`) and as a terminal's Ctrl-C does."""
    parent, pid = _start_parent(COUNTING)
    assert parent.stdout is not None
    assert parent.stdout.readline().strip() == "server child up"
    # Its own group: signals to the parent's group miss it (two signals that land together count as one, so
    # the count below alone could not show a double delivery).
    assert os.getpgid(pid) == pid != os.getpgid(parent.pid)
    os.killpg(parent.pid, signal.SIGTERM)
    assert parent.wait(10) == 11, "the child got the stop more than once (or never)"
    assert _gone(pid, 5)
