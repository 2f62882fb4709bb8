"""A private 3-node RabbitMQ cluster for failover tests (../shared/private-servers.md).

Each node has its own name, AMQP and distribution ports, Mnesia and log dirs, and HOME; the
three HOMEs hold the same Erlang cookie. Nodes 2 and 3 join node 1 with rabbitmqctl
(stop_app, join_cluster, start_app). RUNNING_UNDER_SYSTEMD makes the start script `exec erl`,
so the PID we hold is the beam VM: `kill(i)` is a crash (SIGKILL), stopped by PID only.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import time
import uuid
from typing import TYPE_CHECKING

from tests.rabbit_server import RABBITMQ_SERVER, RABBITMQCTL, free_port

if TYPE_CHECKING:
    from pathlib import Path


class ClusterNode:
    def __init__(self, base: Path, tag: str, index: int, cookie: str) -> None:
        self.base = base
        self.port, self.dist_port = free_port(), free_port()
        self.name = f"rc{tag}n{index}@localhost"
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}/"
        self.proc: subprocess.Popen[bytes] | None = None
        for sub in ("mnesia", "log"):
            (base / sub).mkdir(parents=True, exist_ok=True)
        (base / "rabbitmq.conf").write_text("loopback_users = none\n")
        (base / "enabled_plugins").write_text("[].\n")
        cookie_file = base / ".erlang.cookie"
        cookie_file.write_text(cookie)
        cookie_file.chmod(0o600)
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(base),
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(base / "log"),
            "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
            "RUNNING_UNDER_SYSTEMD": "1",
        }

    def spawn(self) -> None:
        with (self.base / "server.out").open("ab") as out:
            self.proc = subprocess.Popen(
                [RABBITMQ_SERVER], env=self.env, stdout=out, stderr=subprocess.STDOUT
            )

    def wait_ready(self, timeout: float = 90.0) -> None:
        import socket

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"RabbitMQ node {self.name} exited; see {self.base}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"RabbitMQ node {self.name} did not start; see {self.base}")

    def ctl(self, *args: str, timeout: float = 120) -> str:
        done = subprocess.run(
            [RABBITMQCTL, "-n", self.name, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)} on {self.name}: {done.stderr}")
        return done.stdout

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()  # SIGKILL to the beam PID we started: a crash
            self.proc.wait()
            self.proc = None


class PrivateRabbitCluster:
    """Three clustered nodes; `url` lists all of them (amqp://guest:guest@h:p1,h:p2,h:p3/)."""

    def __init__(self, base: Path, size: int = 3) -> None:
        tag = uuid.uuid4().hex[:8]
        cookie = secrets.token_hex(16).upper()
        self.nodes = [ClusterNode(base / f"n{i}", tag, i, cookie) for i in range(1, size + 1)]
        hosts = ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)
        self.url = f"amqp://guest:guest@{hosts}/"

    def start(self) -> None:
        try:
            for node in self.nodes:
                node.spawn()
            for node in self.nodes:
                node.wait_ready()
            first = self.nodes[0].name
            for node in self.nodes[1:]:
                node.ctl("stop_app")
                node.ctl("join_cluster", first)
                node.ctl("start_app")
                node.wait_ready()
            self.nodes[0].ctl("await_online_nodes", str(len(self.nodes)))
        except BaseException:
            self.stop()
            raise

    def running(self, via: ClusterNode) -> str:
        return via.ctl("cluster_status")

    def leader(self, queue: str, via: ClusterNode) -> str:
        """The node name that leads a quorum queue (rabbitmqctl list_queues ... leader)."""
        for line in via.ctl(
            "list_queues", "-q", "--no-table-headers", "name", "leader"
        ).splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0] == queue:
                return parts[1]
        return ""

    def stop(self) -> None:
        for node in self.nodes:
            node.kill()
