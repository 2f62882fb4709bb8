"""A private RabbitMQ node for fault tests (own name, ports, dirs; killed by PID), and a proxy.

See ../shared/private-servers.md: the unwrapped server script, no plugins (starts in ~5 s),
`HOME` for the Erlang cookie. Restarting with the same environment keeps durable queues.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from typing import TYPE_CHECKING

import pytest

from tests.conftest import REQUIRE_SERVICES

if TYPE_CHECKING:
    from pathlib import Path

RABBITMQ_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
RABBITMQCTL = "/usr/lib/rabbitmq/bin/rabbitmqctl"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def need_rabbitmq_server() -> None:
    """Skip (or fail under AIOTASK_REQUIRE_SERVICES=1) when a private node cannot be started."""
    if os.path.exists(RABBITMQ_SERVER) and shutil.which("erl"):
        return
    if REQUIRE_SERVICES:
        pytest.fail("rabbitmq-server is not installed and AIOTASK_REQUIRE_SERVICES=1")
    pytest.skip("rabbitmq-server is not installed; fault tests need a private node")


class PrivateRabbit:
    """One RabbitMQ node in a temp dir, no plugins; restarts keep its durable queues."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.port, self.dist_port = free_port(), free_port()
        self.node = f"test-{uuid.uuid4().hex[:10]}@localhost"
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}/"
        self.proc: subprocess.Popen[bytes] | None = None
        (base / "rabbitmq.conf").write_text("loopback_users = none\n")
        (base / "enabled_plugins").write_text("[].\n")
        self.env = {
            **os.environ,
            "HOME": str(base),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(base / "log"),
            "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
        }

    def start(self) -> None:
        if self.proc is not None:
            return
        with (self.base / "server.out").open("ab") as log:
            self.proc = subprocess.Popen(
                [RABBITMQ_SERVER], env=self.env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + 90  # a node boots in ~5 s, but far slower on a loaded host
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.1)
        self.kill()
        pytest.fail(f"private RabbitMQ did not start; see {self.base / 'server.out'}")

    def kill(self) -> None:
        """kill -9 the node (a crash): the group of the process this helper started."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.proc = None
        # the script we waited for exits first; the beam VM it ran may still hold the
        # listening socket while it tears down its memory, and a start() right away would
        # take that for the new node: wait until the port refuses connections
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    time.sleep(0.05)
            except OSError:
                return

    def close_all_connections(self) -> None:
        subprocess.run(
            [RABBITMQCTL, "-n", self.node, "close_all_connections", "aiotask fault test"],
            env=self.env, check=True, capture_output=True, timeout=30,
        )  # fmt: skip


class FaultProxy:
    """A TCP proxy to a node: holds back chosen handshakes, cuts or refuses connections.

    While `hold` is positive, client bytes containing `marker` (e.g. the connection name a
    client sends in Connection.Start-Ok) wait `hold` seconds: it decides which of a process's
    connections comes back first after a restart. `cut()` resets every open connection (a
    network fault mid-stream); while `refuse` is set, new connections are closed at once.
    `forwarded` counts client bytes passed to the server.
    """

    def __init__(self, upstream_port: int, marker: bytes = b"") -> None:
        self.upstream_port = upstream_port
        self.marker = marker
        self.hold = 0.0
        self.held = 0
        self.refuse = False
        self.forwarded = 0
        self.port = 0
        self.url = ""
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def cut(self) -> None:
        """Drop every proxied connection now (both sides see a reset, nothing more flows)."""
        for task in list(self._tasks):
            task.cancel()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}/"

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refuse:
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.close()
            return
        pumps = [
            asyncio.create_task(self._pump(reader, up_writer, check=True)),
            asyncio.create_task(self._pump(up_reader, writer, check=False)),
        ]
        self._tasks.update(pumps)
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            pass
        finally:
            for task in pumps:
                task.cancel()
                self._tasks.discard(task)
            for w in (writer, up_writer):
                w.transport.abort()  # drop what is still buffered, like a reset

    async def _pump(
        self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, *, check: bool
    ) -> None:
        with contextlib.suppress(OSError):
            while data := await src.read(65536):
                if check and self.hold > 0 and self.marker in data:
                    self.held += 1
                    await asyncio.sleep(self.hold)
                if check:
                    self.forwarded += len(data)
                dst.write(data)
                await dst.drain()
