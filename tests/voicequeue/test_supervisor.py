"""The supervision of `voicequeue up` (voicequeue.supervisor + voicequeue.watchdog) on small real processes.

A real supervisord with the real watchdog listener runs a Procfile of shell commands, so each case
takes seconds: a SIGKILLed process comes back and is counted; one dying after its start period is
given up on after the limit; one dying during start backs off and is given up on; the others keep
running, never restarted; SIGTERM stops everything and exits 0. The whole stack under `voicequeue up`:
tests/reliability/test_up_supervision.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.conftest import wait_port
from tests.stack import free_port
from tests.up import REPO, Up
from voicequeue import supervisor

PROCFILE = """\
# comments and blank lines are skipped

steady: sleep 600
crashy: sh -c 'sleep 2.5; exit 3'
dies: sh -c 'echo "broken setting" >&2; exit 2'
priced: sh -c 'echo "100% ok"; sleep 600'
envy: GREETING=hi PORT=${NOT_SET:-9104} sh -c 'echo "$GREETING from envy on $PORT"; exec sleep 600'
"""


def wait_until(probe: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = probe()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def sup(tmp_path: Path) -> Iterator[Up]:
    (tmp_path / "Procfile").write_text(PROCFILE)
    port = free_port()
    env = {**os.environ, "VQ_DATA_DIR": str(tmp_path / "var"), "VQ_SUPERVISOR_METRICS_PORT": str(port),
           "VQ_SUPERVISOR_START_S": "1", "VQ_SUPERVISOR_MAX_RESTARTS": "3", "VQ_SUPERVISOR_RESTART_WINDOW_S": "60",
           "VQ_SUPERVISOR_STOP_WAIT_S": "5", "PYTHONPATH": str(REPO)}
    up = Up(tmp_path, ports={"supervisor": port})
    code = ("import sys; from pathlib import Path; from voicequeue import supervisor; "
            "supervisor.run(Path(sys.argv[1]), sys.argv[2:])")
    with up.log.open("ab") as out:
        up.proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "Procfile"), "steady", "crashy",
                                    "dies", "priced", "envy"], cwd=tmp_path, env=env, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until(lambda: up.log.exists() and "RUNNING state" in up.log.read_text(), 30, "supervisord")
        wait_port(port, 30, up.proc)  # the watchdog's /metrics
        yield up
    finally:
        try:
            up.stop(30)
        finally:
            up.kill_all()


def test_procfile_lines_keep_shell_syntax_and_percent_signs(tmp_path: Path) -> None:
    (tmp_path / "Procfile").write_text(PROCFILE)
    procs = supervisor.read_procfile(tmp_path / "Procfile")
    assert list(procs) == ["steady", "crashy", "dies", "priced", "envy"]
    conf = supervisor.config(procs, supervisor.SupervisorSettings(), tmp_path)
    assert "command=/bin/sh -c 'exec env sh -c '\"'\"'echo \"100%% ok\"" in conf
    assert "[group:workers]\nprograms=steady,crashy,dies,priced" in conf
    (tmp_path / "Bad").write_text("no colon here\n")
    with pytest.raises(ValueError, match="not a 'name: command' line"):
        supervisor.read_procfile(tmp_path / "Bad")


def test_the_repo_procfile_starts_redis_first_and_the_gateway_last(tmp_path: Path) -> None:
    procs = supervisor.read_procfile(REPO / "Procfile")
    conf = supervisor.config(procs, supervisor.SupervisorSettings(), tmp_path)
    priority = {name: supervisor.PRIORITY.get(name, supervisor.WORKER_PRIORITY) for name in procs}
    assert priority["redis"] < priority["llm-server"] < priority["asr"] == priority["tts"] < priority["gateway"]
    assert "[group:workers]\nprograms=asr,asr-batch,llm,tts\n" in conf
    assert "stopwaitsecs=60" in conf  # a worker gets time to finish its job


def test_killed_process_comes_back_and_crash_loops_are_given_up_on(sup: Up) -> None:
    wait_until(lambda: sup.processes()["steady"]["statename"] == "RUNNING", 30, "steady running")
    pids = sup.pids()
    priced_pid = pids["priced"]

    # A kill -9: back at once with a new pid, counted once.
    old, _ = sup.kill("steady")
    wait_until(lambda: sup.pids()["steady"] not in (0, old), 10, "steady back")
    wait_until(lambda: sup.metric("voicequeue_process_restarts_total", process="steady") == 1, 10, "the count")

    # Dies after its start period, three times within the window: stopped for good, loudly.
    wait_until(lambda: sup.metric("voicequeue_process_given_up", process="crashy") == 1, 60, "giving up on crashy")
    assert sup.metric("voicequeue_process_crashes_total", process="crashy") == 3
    assert sup.metric("voicequeue_process_restarts_total", process="crashy") == 2
    wait_until(lambda: sup.processes()["crashy"]["statename"] == "STOPPED", 10, "crashy stopped")

    # Dies at once: supervisord backs off (1 s, 2 s …) and gives up (FATAL).
    wait_until(lambda: sup.metric("voicequeue_process_given_up", process="dies") == 1, 60, "giving up on dies")
    assert sup.processes()["dies"]["statename"] in ("FATAL", "STOPPED")
    assert sup.metric("voicequeue_process_crashes_total", process="dies") == 3

    log = sup.tail(100_000)
    assert "GIVING UP on crashy: it crashed 3 times within 60 s" in log
    assert "GIVING UP on dies" in log
    assert "broken setting" in log  # the child's own output reaches the terminal
    assert "hi from envy on 9104" in log  # VAR=value prefixes and ${VAR:-default}, as in the Procfile
    assert psutil.Process(sup.pids()["envy"]).name() == "sleep"  # exec all the way: the pid is the program
    time.sleep(3)  # given up means no further tries
    assert sup.metric("voicequeue_process_crashes_total", process="crashy") == 3
    assert sup.processes()["crashy"]["statename"] == "STOPPED"

    # Nothing else was touched.
    assert sup.pids()["priced"] == priced_pid
    assert sup.metric("voicequeue_process_restarts_total", process="priced") == 0
    assert sup.metric("voicequeue_process_up", process="priced") == 1


def test_sigterm_stops_every_process_and_exits_zero(sup: Up) -> None:
    wait_until(lambda: sup.processes()["priced"]["statename"] == "RUNNING", 30, "priced running")
    pids = [p for p in sup.pids().values() if p > 0]
    assert sup.proc is not None
    sup.proc.send_signal(signal.SIGTERM)
    assert sup.proc.wait(30) == 0
    alive = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert alive == []
