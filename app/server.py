"""uvicorn as `stowage serve` and `stowage dev` run it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Generator
from typing import Any

import uvicorn
from fastapi import FastAPI
from prometheus_client import multiprocess as prometheus_multiprocess
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors.multiprocess import Multiprocess

from app.config import ConfigError, Settings


class GracefulServer(uvicorn.Server):
    """uvicorn re-raises the signal it caught once serve() returns, so a process stopped
    gracefully by SIGTERM still dies "by SIGTERM" (exit status 143 under a shell or Docker),
    and `stowage dev` would die before its worker and resources are shut down. Here SIGINT
    and SIGTERM only stop the server: in-flight requests finish (timeout_graceful_shutdown),
    the caller's cleanup runs, and the process exits 0."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        loop = asyncio.get_running_loop()
        sigs = (signal.SIGINT, signal.SIGTERM)
        for sig in sigs:
            loop.add_signal_handler(sig, self.handle_exit, sig, None)
        try:
            yield
        finally:
            for sig in sigs:
                loop.remove_signal_handler(sig)


class StartupErrors:
    """The API as `stowage serve` hands it to uvicorn: a configuration error while starting
    (a refused storage, ...; logged with its reason where it was found) fails the startup with
    one line instead of uvicorn logging the whole traceback, and is kept in `error` for the
    command to exit with."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self.error: ConfigError | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return

        async def send_startup(message: Any) -> None:
            error = getattr(self.app.state, "startup_error", None)
            if message["type"] == "lifespan.startup.failed" and error is not None:
                self.error = error
                message = {**message, "message": f"{type(error).__name__}: not starting"}
            await send(message)

        await self.app(scope, receive, send_startup)


SUPERVISOR_PID = "STOWAGE_SUPERVISOR_PID"


def usable_cpus() -> int:
    """The cores this process may run on (a container's CPU set, not the host's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def served_app() -> StartupErrors:
    """The app factory each process of a several-process `stowage serve` imports: settings
    from the environment (the parent checked them), logging set up as the CLI does."""
    from app.config import load_settings
    from app.main import create_app
    from app.observability.logs import configure_logging

    _stop_with_parent()
    settings = load_settings()
    configure_logging(settings.log_level, settings.log_format)
    return StartupErrors(create_app(settings))


def _stop_with_parent() -> None:
    """A process whose supervisor died (SIGKILL, OOM) gets SIGTERM, and so finishes its
    requests and exits, instead of serving on, unsupervised, on the inherited socket. The
    kernel says so at once on Linux (PR_SET_PDEATHSIG); a thread that watches the parent's
    pid covers the rest (another OS, or a parent that died before the call)."""
    # the supervisor's pid, from the supervisor itself: one that died before this process got
    # here is not mistaken for whatever adopted it
    parent = int(os.environ.get(SUPERVISOR_PID, os.getppid()))
    with contextlib.suppress(Exception):  # not Linux: no PR_SET_PDEATHSIG
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="stowage-parent-watch", daemon=True).start()


class _Supervisor(Multiprocess):
    """uvicorn's supervisor (restarts a process that dies; stops all when one cannot start;
    SIGTERM → each finishes its requests within the grace period), telling the metrics of a
    process that died so, so its scrape-time gauges stop counting."""

    def keep_subprocess_alive(self) -> None:
        for process in self.processes:
            if not process.process.is_alive() and process.pid is not None:
                with contextlib.suppress(Exception):
                    prometheus_multiprocess.mark_process_dead(process.pid)
        super().keep_subprocess_alive()


def serve_processes(settings: Settings, host: str, port: int, workers: int) -> int:
    """`stowage serve` with several processes on one listening socket. Returns the exit
    status: 0 after a graceful stop, 3 when the API could not start."""
    import logging

    os.environ[SUPERVISOR_PID] = str(os.getpid())  # inherited by the processes it starts
    # an operator's directory is theirs to keep; ours goes with us
    metrics_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    own_dir = not metrics_dir
    if not metrics_dir:
        metrics_dir = tempfile.mkdtemp(prefix="stowage-metrics-")
        # before any process creates a metric: prometheus_client picks its storage at import
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    config = uvicorn.Config("app.server:served_app", factory=True, host=host, port=port,
                            workers=workers, log_config=None,
                            timeout_graceful_shutdown=settings.shutdown_grace)
    try:
        try:
            sock = config.bind_socket()
        except SystemExit:  # uvicorn logged why (the port is taken, ...)
            return 3
        supervisor = _Supervisor(config, sockets=[sock])
        supervisor.run()
        failed = [p.pid for p in supervisor.processes if p.exitcode == STARTUP_FAILURE]
        if failed:
            logging.getLogger(__name__).error("the API could not start (see above)")
            return 3
        return 0
    finally:
        if own_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)
