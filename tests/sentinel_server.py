"""A private Redis Sentinel set for tests: 1 primary, 1 replica, 3 sentinels, own ports and
directory, every process started and killed by its PID (never by name)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from typing import TYPE_CHECKING

from tests.servers import PrivateRedis, free_port

if TYPE_CHECKING:
    from pathlib import Path

SERVICE = "mymaster"


def _ask(port: int, *args: str) -> bytes:
    """One inline command to a local server; the raw reply (enough for readiness checks)."""
    with socket.create_connection(("127.0.0.1", port), timeout=1.0) as s:
        s.sendall((" ".join(args) + "\r\n").encode())
        time.sleep(0.05)
        return s.recv(65536)


class PrivateSentinelSet:
    """`url` is redis+sentinel://127.0.0.1:S1,...:S3/0?service=mymaster."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        (directory / "primary").mkdir(parents=True, exist_ok=True)
        (directory / "replica").mkdir(exist_ok=True)
        self.primary = PrivateRedis(directory / "primary")
        self.replica = PrivateRedis(
            directory / "replica", "--replicaof", "127.0.0.1", str(self.primary.port)
        )
        self.sentinel_ports = [free_port() for _ in range(3)]
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)
        self.url = f"redis+sentinel://{hosts}/0?service={SERVICE}"
        self.sentinels: list[subprocess.Popen[bytes]] = []

    @staticmethod
    def available() -> bool:
        return shutil.which("redis-server") is not None

    def start(self, timeout: float = 30) -> None:
        self.primary.start()
        self.replica.start()
        for port in self.sentinel_ports:
            conf = self.directory / f"sentinel-{port}.conf"  # sentinels rewrite it: one each
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {self.directory}\n"
                f"sentinel monitor {SERVICE} 127.0.0.1 {self.primary.port} 2\n"
                f"sentinel down-after-milliseconds {SERVICE} 1000\n"
                f"sentinel failover-timeout {SERVICE} 3000\n"
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
        raise RuntimeError("private Sentinel set did not settle")

    def _settled(self, port: int) -> bool:
        """This sentinel sees the replica and the two other sentinels (a failover needs them)."""
        try:
            reply = _ask(port, "SENTINEL", "MASTER", SERVICE)
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
        reply = _ask(self.sentinel_ports[0], "SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)
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
            reply = _ask(port, "INFO", "replication")
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
