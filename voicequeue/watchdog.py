"""supervisord event listener: count restarts, export them to Prometheus, give up on crash loops.

supervisord restarts a process that dies after it has run `startsecs` at once and forever; only
processes dying during start are given up on (FATAL). An ASR worker that crashes on its first
job, or a gateway that dies a minute in, would otherwise loop. So this listener keeps each
process's crash times and stops a process that crashed `supervisor_max_restarts` times within
`supervisor_restart_window_s`, logging it at CRITICAL; the others keep running.

Run by supervisord (`[eventlistener:watchdog]`): events arrive on stdin, answers go on stdout,
so logs go to stderr only.
"""

from __future__ import annotations

import collections
import logging
import os
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from prometheus_client import Counter, Gauge, start_http_server

from shared import logs
from voicequeue.supervisor import SupervisorSettings

log = logging.getLogger("voicequeue.watchdog")

RESTARTS = Counter("voicequeue_process_restarts", "Processes restarted by `voicequeue up` after they died.",
                   ["process"])
CRASHES = Counter("voicequeue_process_crashes", "Unexpected exits of processes under `voicequeue up`.",
                  ["process"])
UP = Gauge("voicequeue_process_up", "1 while the process is running (past its start period).", ["process"])
GAVE_UP = Gauge("voicequeue_process_given_up", "1 once `voicequeue up` has given up restarting the process.",
                ["process"])

CRASH_STATES = {"PROCESS_STATE_EXITED", "PROCESS_STATE_BACKOFF"}


class Watchdog:
    """Decides from supervisord's PROCESS_STATE events; `stop` stops a process by its supervisord name."""

    def __init__(self, settings: SupervisorSettings, stop: Callable[[str], None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_crashes = settings.supervisor_max_restarts
        self.window_s = settings.supervisor_restart_window_s
        self.stop = stop
        self.clock = clock
        self.crashes: dict[str, collections.deque[float]] = collections.defaultdict(collections.deque)
        self.given_up: set[str] = set()

    def handle(self, event: str, headers: dict[str, str]) -> None:
        name = headers["processname"]
        full = name if headers.get("groupname", name) == name else f"{headers['groupname']}:{name}"
        if event == "PROCESS_STATE_RUNNING":
            UP.labels(name).set(1)
            GAVE_UP.labels(name).set(0)
            self.given_up.discard(full)
            log.info("process running", extra={"program": name, "pid": headers.get("pid")})
            return
        UP.labels(name).set(0)
        if event == "PROCESS_STATE_STARTING" and headers.get("from_state") in ("EXITED", "BACKOFF") \
                and full not in self.given_up:  # supervisord respawns before we stop it: not a restart
            RESTARTS.labels(name).inc()
            log.warning("restarting process", extra={"program": name, "try": headers.get("tries"),
                                                     "crashes_in_window": len(self.crashes[full])})
        elif event == "PROCESS_STATE_FATAL":
            self._give_up(name, full, "it kept dying while starting")
        elif event in CRASH_STATES and (event == "PROCESS_STATE_BACKOFF" or headers.get("expected") == "0"):
            self._crashed(name, full, event)

    def _crashed(self, name: str, full: str, event: str) -> None:
        CRASHES.labels(name).inc()
        now = self.clock()
        times = self.crashes[full]
        times.append(now)
        while times and now - times[0] > self.window_s:
            times.popleft()
        log.warning("process died", extra={"program": name, "while": "starting" if event.endswith("BACKOFF")
                                           else "running", "crashes_in_window": len(times)})
        if len(times) >= self.max_crashes and full not in self.given_up:
            self._give_up(name, full, f"it crashed {len(times)} times within {self.window_s:g} s")
            try:
                self.stop(full)
            except Exception as exc:  # already stopped or FATAL: nothing left to stop
                log.warning("could not stop %s: %s", full, exc)

    def _give_up(self, name: str, full: str, why: str) -> None:
        if full in self.given_up:
            return
        self.given_up.add(full)
        GAVE_UP.labels(name).set(1)
        log.critical(f"GIVING UP on {name}: {why}. The other processes keep running; /readyz lists the queues "
                     f"left without a worker. Fix the cause, then `supervisorctl -c <data dir>/supervisor/"
                     f"supervisord.conf start {full}`.", extra={"program": name})


def _rpc_stop(env: dict[str, str]) -> Callable[[str], None]:
    from supervisor import childutils

    def stop(full: str) -> None:
        childutils.getRPCInterface(env).supervisor.stopProcess(full, False)
    return stop


def _headers(line: str) -> dict[str, str]:
    return dict(item.split(":", 1) for item in line.split())


def listen(watchdog: Watchdog, stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout) -> None:
    """supervisord's listener protocol: READY, read one event, handle it, RESULT."""
    while True:
        stdout.write("READY\n")
        stdout.flush()
        line = stdin.readline()
        if not line:
            return  # supervisord went away
        header = _headers(line)
        payload = stdin.read(int(header["len"]))
        first, _, _ = payload.partition("\n")
        try:
            watchdog.handle(header["eventname"], _headers(first))
        except Exception:  # a bad event must not stop restarts from being counted
            log.exception("cannot handle event %s", header.get("eventname"))
        stdout.write("RESULT 2\nOK")
        stdout.flush()


def main(env: dict[str, Any] | None = None) -> None:
    settings = SupervisorSettings()
    logs.setup("supervisor", settings.log_level, settings.log_json)
    start_http_server(settings.supervisor_metrics_port)
    listen(Watchdog(settings, _rpc_stop(dict(env or os.environ))))


if __name__ == "__main__":
    main()
