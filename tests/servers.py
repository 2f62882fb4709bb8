"""Private server instances for fault tests: own port, own directory, stopped by PID."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path


class PrivateRedis:
    """A redis-server of our own on a free port; started and killed by PID, never by name."""

    def __init__(self, directory: Path, *extra: str) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1"]
        self.args += ["--dir", str(directory), "--save", "", "--appendonly", "no", *extra]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(self.args, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("private redis-server did not start")

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()  # by the PID we started
            self.proc.wait()
            self.proc = None


def free_port() -> int:
    """A TCP port nobody listens on right now (the kernel's pick)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


RABBITMQ_SERVER = (
    "/usr/lib/rabbitmq/bin/rabbitmq-server"  # unwrapped: runs as us, not as `rabbitmq`
)


class PrivateRabbit:
    """A RabbitMQ node of our own: own name, ports, Mnesia and HOME; killed by PID, never by name.

    RUNNING_UNDER_SYSTEMD makes the script `exec erl`, so the PID we start is the beam process
    itself: `kill()` is a crash (kill -9 of the VM), and `start()` with the same environment
    brings the node back with its durable queues and persistent messages.
    """

    def __init__(self, directory: Path) -> None:
        import uuid

        self.directory = directory
        self.port = free_port()
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}/"
        (directory / "mnesia").mkdir(parents=True, exist_ok=True)
        (directory / "log").mkdir(exist_ok=True)
        (directory / "enabled_plugins").write_text("[].\n")
        (directory / "rabbitmq.conf").write_text("loopback_users = none\n")
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(directory),
            "RABBITMQ_NODENAME": f"chaos-{uuid.uuid4().hex[:12]}@localhost",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(free_port()),
            "RABBITMQ_MNESIA_BASE": str(directory / "mnesia"),
            "RABBITMQ_LOG_BASE": str(directory / "log"),
            "RABBITMQ_CONFIG_FILE": str(directory / "rabbitmq"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(directory / "enabled_plugins"),
            "RUNNING_UNDER_SYSTEMD": "1",
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60) -> None:
        with (self.directory / "stdout.log").open("ab") as out:
            self.proc = subprocess.Popen(
                [RABBITMQ_SERVER], env=self.env, stdout=out, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"private RabbitMQ exited with {self.proc.returncode}")
            if _answers(self.port):
                return
            time.sleep(0.1)
        self.kill()
        raise RuntimeError("private RabbitMQ did not start")

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()  # SIGKILL to the beam PID we started: a crash, no clean shutdown
            self.proc.wait()
            self.proc = None


def pg_bin(name: str) -> str | None:
    """A PostgreSQL server program: on PATH, else in Debian's /usr/lib/postgresql/N/bin (the
    packages put only wrappers on PATH), the newest version first."""
    import glob
    import shutil

    found = shutil.which(name)
    if found is not None:
        return found
    candidates = sorted(
        glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
        key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0,
    )
    return candidates[-1] if candidates else None


class PrivatePostgres:
    """A PostgreSQL cluster of our own: `initdb` in a temp dir, own port, stopped by PID.

    PostgreSQL refuses to run as root, so under root (CI) the cluster belongs to the `postgres`
    user and the server process is started as that user directly (Popen user=): the PID we hold
    is the postmaster itself. `crash()` is an immediate shutdown (SIGQUIT: no checkpoint, crash
    recovery on the next start, as after a power cut with fsync on); `start()` again brings the
    same data back on the same port. The directory lives under /tmp (pytest's tmp dirs are
    private to root) and is removed by `remove()`.
    """

    def __init__(self) -> None:
        import tempfile

        self.directory = tempfile.mkdtemp(prefix="aiotask-pg-")
        self.data = os.path.join(self.directory, "data")
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self.user = "postgres" if os.geteuid() == 0 else None
        if self.user is not None:
            import shutil

            os.chmod(self.directory, 0o700)  # then owned by postgres: only it may enter
            shutil.chown(self.directory, self.user, self.user)
        self.proc: subprocess.Popen[bytes] | None = None
        subprocess.run(
            [
                pg_bin("initdb") or "initdb",
                "-D",
                self.data,
                "-U",
                "postgres",
                "-A",
                "trust",
                "--no-sync",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            user=self.user,
            cwd=self.directory,
        )

    def start(self, timeout: float = 30) -> None:
        with open(os.path.join(self.directory, "server.log"), "ab") as out:
            self.proc = subprocess.Popen(
                [
                    *(
                        pg_bin("postgres") or "postgres",
                        "-D",
                        self.data,
                        "-p",
                        str(self.port),
                        "-k",
                        self.directory,
                    ),
                    *("-c", "listen_addresses=127.0.0.1", "-c", "fsync=on"),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                user=self.user,
                cwd=self.directory,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"private postgres exited with {self.proc.returncode}")
            ready = subprocess.run(
                [
                    pg_bin("pg_isready") or "pg_isready",
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(self.port),
                    "-q",
                ],
                check=False,
            )
            if ready.returncode == 0:
                return
            time.sleep(0.1)
        self.crash()
        raise RuntimeError("private postgres did not start")

    def crash(self) -> None:
        """Immediate shutdown of the postmaster we started (its backends go with it)."""
        if self.proc is not None:
            import signal

            self.proc.send_signal(signal.SIGQUIT)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    def remove(self) -> None:
        import shutil

        self.crash()
        shutil.rmtree(self.directory, ignore_errors=True)
