"""`voicequeue up`: run the Procfile's processes under supervisord, which restarts what dies.

honcho (used before) stops every process when one exits, so one crashed worker took the whole
stack down. supervisord (the `supervisor` package) keeps the others running and restarts the
one that died; `voicequeue.watchdog`, an event listener inside the same supervisord, counts the
restarts for Prometheus and gives up on a process that keeps crashing. Why supervisor and not
circus or a loop of our own: docs/reliability.md ("Local supervision").

What supervisord gives, as configured here:
* a process that dies after running `startsecs` is restarted at once; one that dies sooner is
  retried after 1 s, 2 s, 3 s … (its BACKOFF state) and given up on (FATAL) after
  `supervisor_max_restarts` tries;
* start order by priority: Redis, llm-server, the workers, the gateway. Nothing waits for
  readiness: workers and the gateway wait for Redis themselves (`shared.connection.connect`);
* SIGINT/SIGTERM stop in the reverse order, one priority at a time: the gateway first (no new
  work), then all workers at once (each finishes its running job, up to `supervisor_stop_wait_s`,
  else its job is requeued by the next worker's reaper), then llm-server, then Redis (AOF flushed).
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from pydantic import Field

from shared.config import CommonSettings

PRIORITY = {"redis": 10, "llm-server": 20, "gateway": 40}
WORKER_PRIORITY = 30
WORKERS_GROUP = "workers"


class SupervisorSettings(CommonSettings):
    supervisor_max_restarts: int = Field(
        5, ge=1, description="`voicequeue up` gives up on a process after this many crashes within "
        "VQ_SUPERVISOR_RESTART_WINDOW_S (the rest keep running)."
    )
    supervisor_restart_window_s: float = Field(
        120.0, gt=0, description="Window in which VQ_SUPERVISOR_MAX_RESTARTS crashes mean a crash loop."
    )
    supervisor_start_s: int = Field(
        3, ge=1, description="A process must stay up this long to count as started; dying sooner backs off "
        "1 s, 2 s, 3 s … before the next try."
    )
    supervisor_stop_wait_s: int = Field(
        60, ge=1, description="On Ctrl-C/SIGTERM, how long a worker may take to finish its running job before "
        "it is killed (its job is then requeued on the next start)."
    )
    supervisor_metrics_port: int = Field(
        9105, description="Port of `voicequeue up`'s /metrics (process restarts, up, given up)."
    )


def read_procfile(path: Path) -> dict[str, str]:
    """`name: command` lines, in order; blank lines and comments skipped."""
    procs: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, command = line.partition(":")
        if not sep or not command.strip():
            raise ValueError(f"{path}: not a 'name: command' line: {raw!r}")
        procs[name.strip()] = command.strip()
    return procs


def _ini(value: str) -> str:
    return value.replace("%", "%%")  # supervisord expands %(name)s in values


def _program(name: str, command: str, settings: SupervisorSettings) -> list[str]:
    is_worker = name not in PRIORITY
    # Through sh, as honcho ran Procfile lines (${VAR:-default}); `exec env` takes the VAR=value prefixes
    # (plain `exec` would take the first one for the command) and keeps the pid the one supervisord watches.
    argv = ["/bin/sh", "-c", f"exec env {command}"]
    return [
        f"[program:{name}]",
        f"command={_ini(shlex.join(argv))}",
        f"priority={PRIORITY.get(name, WORKER_PRIORITY)}",
        "autostart=true",
        "autorestart=true",
        f"startsecs={settings.supervisor_start_s}",
        f"startretries={settings.supervisor_max_restarts}",
        "stopsignal=TERM",
        f"stopwaitsecs={settings.supervisor_stop_wait_s if is_worker else 15}",
        # The whole group: llm-server's children, a forking worker's scheduler. rq's job processes have
        # their own group and die with their parent (PR_SET_PDEATHSIG).
        "stopasgroup=true",
        "killasgroup=true",
        "redirect_stderr=true",
        "stdout_logfile=/dev/stdout",
        "stdout_logfile_maxbytes=0",
        "",
    ]


def config(procs: dict[str, str], settings: SupervisorSettings, state_dir: Path) -> str:
    """supervisord.conf for `procs` (name → Procfile command), state (socket, pid, log) in `state_dir`."""
    sock = state_dir / "supervisor.sock"
    watchdog = shlex.join([sys.executable, "-m", "voicequeue.watchdog"])
    lines = [
        "[supervisord]",
        "nodaemon=true",
        f"logfile={_ini(str(state_dir / 'supervisord.log'))}",
        "logfile_maxbytes=10MB",
        "logfile_backups=2",
        f"pidfile={_ini(str(state_dir / 'supervisord.pid'))}",
        f"childlogdir={_ini(str(state_dir))}",
        "loglevel=info",
        # Running as root (a container, CI) is deliberate here; saying so keeps supervisord from warning.
        *(["user=root"] if os.getuid() == 0 else []),
        "",
        "[unix_http_server]",
        f"file={_ini(str(sock))}",
        "chmod=0700",
        "",
        "[supervisorctl]",
        f"serverurl=unix://{_ini(str(sock))}",
        "",
        "[rpcinterface:supervisor]",
        "supervisor.rpcinterface_factory=supervisor.rpcinterface:make_main_rpcinterface",
        "",
        "[eventlistener:watchdog]",
        f"command={_ini(watchdog)}",
        "events=PROCESS_STATE",
        "priority=1",
        "autorestart=true",
        "buffer_size=100",
        "stderr_logfile=/dev/stdout",
        "stderr_logfile_maxbytes=0",
        "",
    ]
    for name, command in procs.items():
        lines += _program(name, command, settings)
    workers = [name for name in procs if name not in PRIORITY]
    if workers:
        # One group, so that a stop signals every worker at once rather than one after another.
        lines += [f"[group:{WORKERS_GROUP}]", f"programs={','.join(workers)}", f"priority={WORKER_PRIORITY}", ""]
    return "\n".join(lines)


def process_name(name: str, procs: Sequence[str]) -> str:
    """The name supervisorctl knows `name` by (workers are in a group)."""
    return name if name in PRIORITY or name not in procs else f"{WORKERS_GROUP}:{name}"


def run(procfile: Path, names: Sequence[str], settings: SupervisorSettings | None = None) -> int:
    """Write the config for the Procfile entries `names` and run supervisord in the foreground (this process
    becomes supervisord: its pid is the one to signal)."""
    settings = settings or SupervisorSettings()
    available = read_procfile(procfile)
    unknown = [n for n in names if n not in available]
    if unknown:
        raise SystemExit(f"voicequeue up: not in {procfile}: {', '.join(unknown)}")
    state_dir = (settings.data_dir / "supervisor").resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    conf = state_dir / "supervisord.conf"
    conf.write_text(config({n: available[n] for n in names}, settings, state_dir))
    print(f"voicequeue: supervising {', '.join(names)}; restarts and give-ups counted at "
          f"http://127.0.0.1:{settings.supervisor_metrics_port}/metrics; "
          f"status: supervisorctl -c {conf} status", flush=True)
    argv = [sys.executable, "-m", "supervisor.supervisord", "-c", str(conf)]
    os.execv(argv[0], argv)
    return 0
