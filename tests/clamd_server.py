"""A real clamd for the tests, with a signature database the tests write themselves.

Test machines have no internet, so no freshclam and no official signatures: `ClamdServer`
writes hash and body signatures for the test files below, builds them into an unsigned
database (`sigtool --unsigned` → daily.cud, which gives clamd a database version to report),
and runs Debian's `clamd` in the foreground on a socket in its own folder. scripts/test
installs clamav-daemon and clamav; nothing here skips when they are missing.

The session fixture `clamd` (unix socket and TCP, StreamMaxLength 1M) is there for every
test (tests/conftest.py names this module in `pytest_plugins`); `start_clamd(...)` gives a
clamd of one's own (another StreamMaxLength; one to stop and start again, `stop()`/`start()`
keep its socket and port; one to add a signature to, `add_body_signature`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

# The EICAR test file: harmless, and every scanner is meant to report it.
EICAR = rb"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
EICAR_SIGNATURE = "Stowage.Test.EICAR"
# A marker of our own: any file holding these bytes anywhere is "infected" (body signature).
MARKER = b"STOWAGE-TEST-MALWARE-MARKER-5f0c1e"
MARKER_SIGNATURE = "Stowage.Test.Marker"

STARTUP_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def require(tool: str) -> str:
    found = shutil.which(tool) or next(
        (p for p in (f"/usr/sbin/{tool}", f"/usr/bin/{tool}") if os.access(p, os.X_OK)), None)
    if found is None:
        pytest.fail(f"{tool} is not installed: scripts/test installs Debian's clamav-daemon "
                    "and clamav (apt-get install clamav-daemon clamav)", pytrace=False)
    return found


def scanned_name(signature: str) -> str:
    """The name clamd reports for one of our signatures: it marks signatures from an unsigned
    database `.UNOFFICIAL`."""
    return f"{signature}.UNOFFICIAL"


class ClamdServer:
    """One clamd process in `root`: `unix_url`, `tcp_url` (when asked for), `stop()`."""

    def __init__(self, root: Path, *, stream_max_length: str = "1M", tcp: bool = False) -> None:
        self.root = root
        self.database_dir = root / "db"
        self.build_dir = root / "build"
        self.socket_path = root / "clamd.sock"
        self.log_path = root / "clamd.log"
        self.stream_max_length = stream_max_length
        self.tcp_port = free_port() if tcp else None
        self.hash_signatures = {EICAR_SIGNATURE: EICAR}
        self.body_signatures = {MARKER_SIGNATURE: MARKER}
        self.database_version = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.startup_seconds: float | None = None

    @property
    def unix_url(self) -> str:
        return f"unix://{self.socket_path}"

    @property
    def tcp_url(self) -> str:
        assert self.tcp_port is not None, "this clamd was started without TCP"
        return f"tcp://127.0.0.1:{self.tcp_port}"

    def start(self) -> None:
        clamd = require("clamd")
        self.database_dir.mkdir(parents=True, exist_ok=True)
        self._build_database()
        config = self.root / "clamd.conf"
        lines = [
            "Foreground yes",
            f"LocalSocket {self.socket_path}",
            f"DatabaseDirectory {self.database_dir}",
            f"LogFile {self.log_path}",
            "LogTime yes",
            f"StreamMaxLength {self.stream_max_length}",
            # a reload swaps the engine only when the new one is built: scans never wait
            "ConcurrentDatabaseReload yes",
            # the tests reload explicitly; clamd's own 10-minute check would only add noise
            "SelfCheck 0",
        ]
        if os.geteuid() == 0:
            # clamd as root drops to the Debian user "clamav" by default, who cannot read
            # a root-owned temp folder
            lines.append("User root")
        if self.tcp_port is not None:
            lines += [f"TCPSocket {self.tcp_port}", "TCPAddr 127.0.0.1"]
        config.write_text("\n".join(lines) + "\n")
        started = time.monotonic()
        self.process = subprocess.Popen(
            [clamd, "--config-file", str(config)], stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=(self.root / "clamd.stderr").open("wb"))
        deadline = started + STARTUP_TIMEOUT
        while not self.ping():
            if self.process.poll() is not None:
                raise RuntimeError(f"clamd exited at start ({self.process.returncode}):\n"
                                   f"{self.logs()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"clamd did not answer PING in {STARTUP_TIMEOUT} s:\n"
                                   f"{self.logs()}")
            time.sleep(0.05)
        self.startup_seconds = time.monotonic() - started

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it lingers; the socket file goes with it."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.process = None
        self.socket_path.unlink(missing_ok=True)

    def logs(self) -> str:
        parts = [p.read_text(errors="replace") for p in (self.log_path, self.root / "clamd.stderr")
                 if p.exists()]
        return "\n".join(parts)[-4000:]

    def command(self, command: bytes, *, timeout: float = 5.0) -> str:
        """One `z` command over the unix socket, answered synchronously (for the helper)."""
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(timeout)
            s.connect(str(self.socket_path))
            s.sendall(command)
            reply = b""
            while not reply.endswith(b"\0"):
                data = s.recv(4096)
                if not data:
                    break
                reply += data
        return reply.rstrip(b"\0").decode()

    def ping(self) -> bool:
        try:
            return self.command(b"zPING\0", timeout=1.0) == "PONG"
        except OSError:
            return False

    def version(self) -> str:
        return self.command(b"zVERSION\0")

    def add_body_signature(self, name: str, body: bytes, *, timeout: float = 30.0) -> None:
        """Add a body signature, rebuild the database and make the running clamd load it
        (RELOAD); returns once clamd reports the new database version."""
        self.body_signatures[name] = body
        self._build_database()
        before = self.version()
        assert self.command(b"zRELOAD\0") == "RELOADING"
        wanted = f"/{self.database_version}/"
        deadline = time.monotonic() + timeout
        while wanted not in self.version():
            if time.monotonic() > deadline:
                raise RuntimeError(f"clamd still runs {before!r} {timeout} s after RELOAD:\n"
                                   f"{self.logs()}")
            time.sleep(0.05)

    def _build_database(self) -> None:
        """daily.hdb (MD5 hash signatures) and daily.ndb (body signatures), built by sigtool
        into an unsigned daily.cud with the next version number, moved in atomically."""
        sigtool = require("sigtool")
        self.database_version += 1
        build = self.build_dir
        shutil.rmtree(build, ignore_errors=True)
        build.mkdir(parents=True)
        (build / "COPYING").write_text("Test signatures of Stowage; not for real use.\n")
        (build / "daily.hdb").write_text("".join(
            f"{hashlib.md5(data).hexdigest()}:{len(data)}:{name}\n"
            for name, data in self.hash_signatures.items()))
        (build / "daily.ndb").write_text("".join(
            f"{name}:0:*:{body.hex()}\n" for name, body in self.body_signatures.items()))
        out = subprocess.run(
            [sigtool, "--unsigned", "--build=daily.cud", f"--cvd-version={self.database_version}",
             "--no-cdiff", "--max-bad-sigs=0", f"--datadir={build}"],
            cwd=build, input=b"stowage-tests\n", capture_output=True, timeout=60)
        built = build / "daily.cud"
        if out.returncode != 0 or not built.exists():
            raise RuntimeError(f"sigtool could not build the test database:\n"
                               f"{out.stdout.decode()}{out.stderr.decode()}")
        os.replace(built, self.database_dir / "daily.cud")


@contextlib.contextmanager
def start_clamd(root: Path | None = None, **options: object) -> Iterator[ClamdServer]:
    """A running clamd (options: stream_max_length, tcp), stopped and removed afterwards."""
    with contextlib.ExitStack() as stack:
        if root is None:
            # short: a unix socket path must stay under 108 bytes
            root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="clamd-")))
        server = ClamdServer(root, **options)  # type: ignore[arg-type]
        stack.callback(server.stop)
        server.start()
        yield server


@pytest.fixture(scope="session")
def clamd() -> Iterator[ClamdServer]:
    """The tests' clamd: unix socket and TCP, StreamMaxLength 1M, the EICAR and marker
    signatures."""
    with start_clamd(stream_max_length="1M", tcp=True) as server:
        yield server
