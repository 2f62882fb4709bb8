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


def _bus_port_pair() -> int:
    """A free port P below 55536 whose cluster bus port P + 10000 is free too."""
    import random

    while True:
        port = random.randrange(20000, 30000)
        if not _answers(port) and not _answers(port + 10000):
            with socket.socket() as a, socket.socket() as b:
                try:
                    a.bind(("127.0.0.1", port))
                    b.bind(("127.0.0.1", port + 10000))
                except OSError:
                    continue
            return port


class PrivateRedisCluster:
    """Six redis-server processes in cluster mode (3 primaries, 3 replicas) on free ports.

    Made with `redis-cli --cluster create ... --cluster-replicas 1`; a low cluster-node-timeout
    lets a replica take over a killed primary within a few seconds. Stopped by PID.
    """

    def __init__(self, directory: Path, size: int = 6, node_timeout_ms: int = 2000) -> None:
        self.nodes: list[PrivateRedis] = []
        for _ in range(size):
            port_dir = directory / f"n{len(self.nodes)}"
            port_dir.mkdir()
            node = PrivateRedis(port_dir, "--cluster-enabled", "yes")
            node.port = _bus_port_pair()
            node.args[2] = str(node.port)
            node.url = f"redis://127.0.0.1:{node.port}/0"
            node.args += ["--cluster-config-file", f"{port_dir}/nodes.conf"]
            node.args += ["--cluster-node-timeout", str(node_timeout_ms)]
            node.args += ["--repl-diskless-sync-delay", "0"]  # replicas in sync at once
            self.nodes.append(node)
        self.url = "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes[:3])
        self.url += "/0"

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        addrs = [f"127.0.0.1:{n.port}" for n in self.nodes]
        subprocess.run(
            [
                "redis-cli",
                "--cluster",
                "create",
                *addrs,
                "--cluster-replicas",
                "1",
                "--cluster-yes",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            timeout=60,
        )
        self.wait_ok()
        deadline = time.monotonic() + 60  # a replica out of sync refuses to take over
        while time.monotonic() < deadline:
            roles = [self.info(n, "info", "replication") for n in self.nodes]
            replicas = [r for r in roles if "role:slave" in r]
            if len(replicas) == len(self.nodes) // 2 and all(
                "master_link_status:up" in r for r in replicas
            ):
                return
            time.sleep(0.2)
        raise RuntimeError("the private Redis Cluster's replicas did not sync")

    def info(self, node: PrivateRedis, *command: str) -> str:
        out = subprocess.run(
            ["redis-cli", "-p", str(node.port), *command],
            capture_output=True,
            timeout=10,
            check=False,
        )
        return out.stdout.decode()

    def wait_ok(self, timeout: float = 60.0) -> None:
        """Until every live node says cluster_state:ok and sees all 16384 slots served."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            live = [n for n in self.nodes if n.proc is not None]
            if all(
                "cluster_state:ok" in self.info(n, "cluster", "info")
                and "cluster_slots_ok:16384" in self.info(n, "cluster", "info")
                for n in live
            ):
                return
            time.sleep(0.2)
        raise RuntimeError("private Redis Cluster did not reach cluster_state:ok")

    def primary_of(self, key: str) -> PrivateRedis:
        """The node serving `key`'s slot now (asked of a live node: CLUSTER KEYSLOT + SLOTS)."""
        live = next(n for n in self.nodes if n.proc is not None)
        slot = int(self.info(live, "cluster", "keyslot", key).strip())
        for line in self.info(live, "cluster", "nodes").splitlines():
            fields = line.split()
            if "master" not in fields[2] or "fail" in fields[2]:
                continue
            for span in fields[8:]:
                lo, _, hi = span.partition("-")
                if lo.isdigit() and int(lo) <= slot <= int(hi or lo):
                    port = int(fields[1].split("@")[0].rsplit(":", 1)[1])
                    return next(n for n in self.nodes if n.port == port)
        raise RuntimeError(f"no primary serves slot {slot}")

    def stop(self) -> None:
        for node in self.nodes:
            node.kill()


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


_PG_TEMPLATE: list[str] = []


def _pg_template(user: str | None) -> str:
    """A fresh `initdb` cluster (never started), made once per process and copied by every
    PrivatePostgres: each copy is a cluster of its own, as if initdb had run for it."""
    if not _PG_TEMPLATE:
        import atexit
        import shutil
        import tempfile

        directory = tempfile.mkdtemp(prefix="aiotask-pgtemplate-")
        atexit.register(shutil.rmtree, directory, True)
        if user is not None:
            os.chmod(directory, 0o700)  # owned by postgres, like each server's directory
            shutil.chown(directory, user, user)
        data = os.path.join(directory, "data")
        subprocess.run(
            [pg_bin("initdb") or "initdb", "-D", data, "-U", "postgres", "-A", "trust", "-N"],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            user=user,
            cwd=directory,
        )
        _PG_TEMPLATE.append(data)
    return _PG_TEMPLATE[0]


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
        # a copy of one initdb per test process: about 0.2 s instead of 2 s (more when loaded)
        subprocess.run(
            ["cp", "-a", _pg_template(self.user), self.data],
            check=True,
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
                    # after a crash, one syncfs() of the file system before recovery instead of
                    # an fsync() per data file (PostgreSQL's default): 0.3 s instead of 2 s here
                    *("-c", "recovery_init_sync_method=syncfs"),
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


def pgbouncer_bin() -> str | None:
    """Debian's pgbouncer (in /usr/sbin, which a non-root PATH may lack)."""
    import shutil

    found = shutil.which("pgbouncer")
    if found is None and os.access("/usr/sbin/pgbouncer", os.X_OK):
        found = "/usr/sbin/pgbouncer"
    return found


class PrivatePgBouncer:
    """A pgbouncer of our own in front of a PostgreSQL server: own port, config in a temp dir,
    `pool_mode` as given (transaction by default), stopped by PID.

    `auth_type = any` with the server's user fixed in the database line: the server trusts
    local connections, so no password file is needed. pgbouncer refuses to run as root, so
    under root it runs as the `postgres` user (Popen user=: the PID we hold is pgbouncer's).
    Clients connect to database `db` on `url`'s port.
    """

    def __init__(self, server_url: str, pool_mode: str = "transaction", pool_size: int = 4) -> None:
        import tempfile
        from urllib.parse import urlsplit

        parts = urlsplit(server_url)
        db = parts.path.lstrip("/") or "postgres"
        self.directory = tempfile.mkdtemp(prefix="aiotask-pgbouncer-")
        self.port = free_port()
        self.url = f"postgresql://{parts.username or 'postgres'}@127.0.0.1:{self.port}/{db}"
        self.user = "postgres" if os.geteuid() == 0 else None
        self.config = os.path.join(self.directory, "pgbouncer.ini")
        with open(self.config, "w") as f:
            f.write(
                "[databases]\n"
                f"{db} = host={parts.hostname or '127.0.0.1'} port={parts.port or 5432} "
                f"dbname={db} user={parts.username or 'postgres'}\n"
                "[pgbouncer]\n"
                f"listen_addr = 127.0.0.1\nlisten_port = {self.port}\nunix_socket_dir =\n"
                f"auth_type = any\npool_mode = {pool_mode}\ndefault_pool_size = {pool_size}\n"
                "max_client_conn = 500\n"
                f"logfile = {os.path.join(self.directory, 'pgbouncer.log')}\n"
            )
        if self.user is not None:
            import shutil

            for path in (self.directory, self.config):
                shutil.chown(path, self.user, self.user)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 15) -> None:
        self.proc = subprocess.Popen(
            [pgbouncer_bin() or "pgbouncer", self.config],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            user=self.user,
            cwd=self.directory,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"private pgbouncer exited with {self.proc.returncode}")
            if _answers(self.port):
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("private pgbouncer did not start")

    def log(self) -> str:
        try:
            with open(os.path.join(self.directory, "pgbouncer.log")) as f:
                return f.read()[-3000:]
        except OSError:
            return ""

    def stop(self) -> None:
        """Stop by PID (SIGTERM: pgbouncer's immediate shutdown), then remove the directory."""
        import shutil
        import signal

        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None
        shutil.rmtree(self.directory, ignore_errors=True)
