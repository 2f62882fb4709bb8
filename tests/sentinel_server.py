"""A private Redis Sentinel set for tests: 1 primary, 1 replica, 3 sentinels, own ports and
directory, every process started and killed by its PID (never by name)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from typing import TYPE_CHECKING, Protocol

from tests.servers import PrivateRedis, free_port

if TYPE_CHECKING:
    from pathlib import Path

SERVICE = "mymaster"


class Server(Protocol):
    """A server of the set: a PrivateRedis, or a tls_support.TLSRedis."""

    port: int

    def start(self) -> None: ...

    def kill(self) -> None: ...


def _ask(port: int, command: str) -> bytes:
    """One inline command to a local server; the raw reply (enough for readiness checks)."""
    with socket.create_connection(("127.0.0.1", port), timeout=1.0) as s:
        s.sendall(command.encode() + b"\r\n")
        time.sleep(0.05)
        return s.recv(65536)


class PrivateSentinelSet:
    """`url` is redis+sentinel://127.0.0.1:S1,...:S3/0?service=mymaster.

    tls_support.TLSSentinelSet is the same set on TLS only: it overrides how a server is made
    (`_server`), what a sentinel listens on (`_listen`) and how a server is asked (`ask`).
    """

    SERVICE = SERVICE

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        (directory / "primary").mkdir(parents=True, exist_ok=True)
        (directory / "replica").mkdir(exist_ok=True)
        self.primary = self._server(directory / "primary")
        replica_of = ("--replicaof", "127.0.0.1", str(self.primary.port))
        self.replica = self._server(directory / "replica", *replica_of)
        self.sentinel_ports = [free_port() for _ in range(3)]
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)
        self.url = f"redis+sentinel://{hosts}/0?service={self.SERVICE}"
        self.sentinels: list[subprocess.Popen[bytes]] = []

    def _server(self, directory: Path, *extra: str) -> Server:
        return PrivateRedis(directory, *extra)

    def _listen(self, port: int) -> str:
        """The sentinel configuration's lines on where it listens."""
        return f"port {port}\n"

    def ask(self, port: int, command: str) -> bytes:
        """One inline command to one of the set's servers; the raw reply."""
        return _ask(port, command)

    @staticmethod
    def available() -> bool:
        return shutil.which("redis-server") is not None

    def start(self, timeout: float = 30) -> None:
        self.primary.start()
        self.replica.start()
        for port in self.sentinel_ports:
            conf = self.directory / f"sentinel-{port}.conf"  # sentinels rewrite it: one each
            conf.write_text(
                f"{self._listen(port)}bind 127.0.0.1\ndir {self.directory}\n"
                f"sentinel monitor {self.SERVICE} 127.0.0.1 {self.primary.port} 2\n"
                f"sentinel down-after-milliseconds {self.SERVICE} 1000\n"
                f"sentinel failover-timeout {self.SERVICE} 3000\n"
            )
            self.sentinels.append(
                subprocess.Popen(
                    ["redis-server", str(conf), "--sentinel"], stdout=subprocess.DEVNULL
                )
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(self._settled(p) for p in self.sentinel_ports):
                return
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"private {type(self).__name__} did not settle")

    def _settled(self, port: int) -> bool:
        """This sentinel sees the replica and the two other sentinels (a failover needs them)."""
        try:
            reply = self.ask(port, f"SENTINEL MASTER {self.SERVICE}")
        except OSError:
            return False
        fields = reply.split(b"\r\n")
        try:
            replicas = int(fields[fields.index(b"num-slaves") + 2])
            others = int(fields[fields.index(b"num-other-sentinels") + 2])
        except (ValueError, IndexError):
            return False
        return replicas >= 1 and others >= 2

    def primary_port(self) -> int:
        """The port the sentinels now name as primary."""
        ask = f"SENTINEL GET-MASTER-ADDR-BY-NAME {self.SERVICE}"
        reply = self.ask(self.sentinel_ports[0], ask)
        return int(reply.split(b"\r\n")[-2])

    def kill_primary(self) -> int:
        """kill -9 the current primary (by our PID); returns its port."""
        port = self.primary_port()
        server = self.primary if self.primary.port == port else self.replica
        server.kill()
        return port

    def wait_failover(self, old_port: int, timeout: float = 30) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                port = self.primary_port()
                if port != old_port:
                    return port
            except (OSError, ValueError, IndexError):
                pass
            time.sleep(0.2)
        raise RuntimeError("no failover")

    def replica_count(self, port: int) -> int:
        """Replicas of the server on `port` that are in sync (state=online: they ack writes)."""
        try:
            reply = self.ask(port, "INFO replication")
        except OSError:
            return 0
        return sum(
            1
            for line in reply.split(b"\r\n")
            if line.startswith(b"slave") and b"state=online" in line
        )

    def stop(self) -> None:
        for proc in self.sentinels:
            proc.kill()
            proc.wait()
        self.sentinels = []
        self.replica.kill()
        self.primary.kill()
