"""A private CA, certificates and TLS servers (redis-server, RabbitMQ) for the TLS tests.

Everything is made in the test's temp dir with the `cryptography` package: nothing is committed.
The server certificate names 127.0.0.1 and localhost only, so connecting to 127.0.0.2 (also
loopback) is a host name mismatch. Servers are started and stopped by PID.
"""

from __future__ import annotations

import datetime
import shutil
import socket
import ssl
import subprocess
import time
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import TYPE_CHECKING

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.conftest import REQUIRE_SERVICES
from tests.rabbit_server import PrivateRabbit, free_port, need_rabbitmq_server
from tests.sentinel_server import PrivateSentinelSet

if TYPE_CHECKING:
    from pathlib import Path

    from tests.sentinel_server import Server

Key = ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class PKI:
    """Paths of the PEM files one test module uses."""

    ca: Path  # signed the server and client certificates
    other_ca: Path  # signed nothing we use: the "wrong CA"
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _key() -> Key:
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _cert(
    subject: str, key: Key, issuer: tuple[x509.Name, Key] | None, *, server: bool = False
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    issuer_name, issuer_key = issuer if issuer is not None else (_name(subject), key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
    )
    if issuer is None:  # a CA
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), True
        )
    else:
        builder = builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), False)
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), False
        )
    builder = builder.add_extension(
        x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False
    )
    if server:
        names: list[x509.GeneralName] = [
            x509.DNSName("localhost"),
            x509.IPAddress(IPv4Address("127.0.0.1")),
        ]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write(directory: Path, stem: str, cert: x509.Certificate, key: Key | None) -> Path:
    path = directory / f"{stem}.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if key is not None:
        (directory / f"{stem}.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    return path


def make_pki(directory: Path) -> PKI:
    """A CA, a server and a client certificate it signed, and an unrelated CA."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, other_key, server_key, client_key = _key(), _key(), _key(), _key()
    ca = _cert("aiotask test CA", ca_key, None)
    issuer = (ca.subject, ca_key)
    _write(directory, "ca", ca, None)
    _write(directory, "other-ca", _cert("some other CA", other_key, None), None)
    _write(
        directory,
        "server",
        _cert("aiotask test server", server_key, issuer, server=True),
        server_key,
    )
    client = _cert("aiotask test client", client_key, issuer)
    _write(directory, "client", client, client_key)
    return PKI(
        ca=directory / "ca.pem",
        other_ca=directory / "other-ca.pem",
        server_cert=directory / "server.pem",
        server_key=directory / "server.key",
        client_cert=directory / "client.pem",
        client_key=directory / "client.key",
    )


def client_context(pki: PKI) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca))
    context.load_cert_chain(str(pki.client_cert), str(pki.client_key))
    return context


def _tls_answers(port: int, pki: PKI, request: bytes, expect: bytes) -> bool:
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=0.5) as raw,
            client_context(pki).wrap_socket(raw, server_hostname="127.0.0.1") as s,
        ):
            s.sendall(request)
            return s.recv(64).startswith(expect)
    except OSError:
        return False


class TLSRedis:
    """A redis-server with TLS only (--port 0) that requires client certificates."""

    def __init__(self, directory: Path, pki: PKI) -> None:
        if shutil.which("redis-server") is None:
            if REQUIRE_SERVICES:
                pytest.fail("redis-server is not installed and AIOTASK_REQUIRE_SERVICES=1")
            pytest.skip("redis-server is not installed")
        self.port = free_port()
        self.pki = pki
        # 127.0.0.2 too: the certificate does not name it (host name mismatch tests)
        self.args = ["redis-server", "--port", "0", "--bind", "127.0.0.1", "127.0.0.2"]
        self.args += ["--tls-port", str(self.port), "--tls-cert-file", str(pki.server_cert)]
        self.args += ["--tls-key-file", str(pki.server_key), "--tls-ca-cert-file", str(pki.ca)]
        self.args += ["--tls-auth-clients", "yes", "--dir", str(directory)]
        self.args += ["--save", "", "--appendonly", "no"]
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, *, host: str = "127.0.0.1", ca: Path | None = None, client: bool = True) -> str:
        """rediss:// with the TLS options in the query (redis-py's names)."""
        query = f"ssl_ca_certs={ca or self.pki.ca}"
        if client:
            query += f"&ssl_certfile={self.pki.client_cert}&ssl_keyfile={self.pki.client_key}"
        return f"rediss://{host}:{self.port}/0?{query}"

    def start(self) -> None:
        self.proc = subprocess.Popen(self.args, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if _tls_answers(self.port, self.pki, b"PING\r\n", b"+PONG"):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.kill()
        raise RuntimeError("private TLS redis-server did not start (built without TLS?)")

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()  # the PID we started
            self.proc.wait()
            self.proc = None


def start_tls_rabbit(base: Path, pki: PKI) -> tuple[PrivateRabbit, int]:
    """A private RabbitMQ node with a TLS listener that requires client certificates.

    Returns the node (stop it with `kill()`) and its TLS port; ready when that port answers
    a TLS handshake with the AMQP header.
    """
    need_rabbitmq_server()
    base.mkdir(parents=True, exist_ok=True)
    node = PrivateRabbit(base)
    tls_port = free_port()
    (base / "rabbitmq.conf").write_text(
        "loopback_users = none\n"
        f"listeners.ssl.default = {tls_port}\n"
        f"ssl_options.cacertfile = {pki.ca}\n"
        f"ssl_options.certfile = {pki.server_cert}\n"
        f"ssl_options.keyfile = {pki.server_key}\n"
        "ssl_options.verify = verify_peer\n"
        "ssl_options.fail_if_no_peer_cert = true\n"
    )
    node.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if _tls_answers(tls_port, pki, b"AMQP\x00\x00\x09\x01", b"\x01\x00\x00"):
            return node, tls_port
        time.sleep(0.2)
    node.kill()
    pytest.fail(f"private RabbitMQ did not open its TLS port; see {base / 'server.out'}")


def tls_ask(port: int, pki: PKI, command: bytes) -> bytes:
    """One inline command over TLS (with the client certificate); the raw reply."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=1.0) as raw,
        client_context(pki).wrap_socket(raw, server_hostname="127.0.0.1") as s,
    ):
        s.sendall(command + b"\r\n")
        time.sleep(0.05)
        return s.recv(65536)


class TLSSentinelSet(PrivateSentinelSet):
    """A Sentinel set on TLS only: a TLS-only primary, a TLS-only replica replicating over
    TLS, and 3 sentinels with a tls-port only (no plain port), all requiring client
    certificates. `url` is its rediss+sentinel:// URL (`url_with` another CA). Processes are
    stopped by PID."""

    SERVICE = "tlsmaster"

    def __init__(self, directory: Path, pki: PKI) -> None:
        self.pki = pki
        super().__init__(directory)
        self.url = self.url_with()

    def _server(self, directory: Path, *extra: str) -> Server:
        server = TLSRedis(directory, self.pki)
        # outgoing connections (replica -> primary, sentinel -> all) present the client
        # certificate: the server one is for server authentication only
        server.args += ["--tls-client-cert-file", str(self.pki.client_cert)]
        server.args += ["--tls-client-key-file", str(self.pki.client_key)]
        server.args += ["--tls-replication", "yes", *extra]
        return server

    def _listen(self, port: int) -> str:
        pki = self.pki
        return (
            f"port 0\ntls-port {port}\n"
            f"tls-cert-file {pki.server_cert}\ntls-key-file {pki.server_key}\n"
            f"tls-ca-cert-file {pki.ca}\ntls-auth-clients yes\ntls-replication yes\n"
            f"tls-client-cert-file {pki.client_cert}\ntls-client-key-file {pki.client_key}\n"
        )

    def ask(self, port: int, command: str) -> bytes:
        return tls_ask(port, self.pki, command.encode())

    def url_with(self, *, ca: Path | None = None) -> str:
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)
        query = f"service={self.SERVICE}&ssl_ca_certs={ca or self.pki.ca}"
        query += f"&ssl_certfile={self.pki.client_cert}&ssl_keyfile={self.pki.client_key}"
        return f"rediss+sentinel://{hosts}/0?{query}"
