"""TLS options: URL query and settings merged, validated, and kept out of the client's URL."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from aiotask._tls import (
    TLSOptions,
    build_context,
    context_for,
    for_backend,
    for_broker,
    reset_hint,
    resolve,
)
from aiotask.exceptions import ConfigurationError
from aiotask.settings import Settings
from tests.tls_support import make_pki


def test_query_keys_become_options_and_leave_the_url() -> None:
    got = resolve(
        "rediss://:pw@h:6380/2?ssl_ca_certs=/ca.pem&db=2&ssl_certfile=/c.pem&ssl_keyfile=/k.pem"
        "&ssl_check_hostname=false&ssl_cert_reqs=optional&health_check_interval=5",
        {},
        what="broker",
    )
    assert got.url == "rediss://:pw@h:6380/2?db=2&health_check_interval=5"
    assert got.tls == TLSOptions("/ca.pem", "/c.pem", "/k.pem", ssl.CERT_OPTIONAL, False)


def test_tls_scheme_without_options_verifies_against_system_cas() -> None:
    got = resolve("amqps://u:p@h/vhost", {}, what="broker")
    assert got.url == "amqps://u:p@h/vhost"
    assert got.tls == TLSOptions(None, None, None, ssl.CERT_REQUIRED, True)
    assert resolve("redis://h/0", {}, what="broker").tls is None


def test_url_wins_over_the_setting_key_by_key() -> None:
    setting = {"ca_certs": "/from-setting.pem", "ssl_certfile": "/c.pem", "keyfile": "/k.pem"}
    got = resolve("rediss://h/0?ssl_ca_certs=/from-url.pem", setting, what="broker")
    assert got.tls == TLSOptions("/from-url.pem", "/c.pem", "/k.pem")


def test_celery_style_values_are_understood() -> None:
    got = resolve("rediss://h/0?ssl_cert_reqs=CERT_NONE", {}, what="broker")
    assert got.tls is not None
    assert got.tls.cert_reqs == ssl.CERT_NONE
    got = resolve("rediss://h/0", {"ssl_cert_reqs": ssl.CERT_OPTIONAL}, what="broker")
    assert got.tls is not None
    assert got.tls.cert_reqs == ssl.CERT_OPTIONAL
    with pytest.raises(ConfigurationError, match="cert_reqs"):
        resolve("rediss://h/0", {"cert_reqs": 7}, what="broker")


def test_aio_pika_query_names_work_on_amqps() -> None:
    got = resolve(
        "amqps://h/?cafile=/ca.pem&certfile=/c.pem&keyfile=/k.pem&heartbeat=5", {}, what="b"
    )
    assert got.url == "amqps://h/?heartbeat=5"
    assert got.tls == TLSOptions("/ca.pem", "/c.pem", "/k.pem")
    got = resolve("amqps://h/?no_verify_ssl=1", {}, what="broker")
    assert got.tls is not None
    assert got.tls.cert_reqs == ssl.CERT_NONE


@pytest.mark.parametrize(
    ("url", "setting", "fragment"),
    [
        ("redis://h/0?ssl_ca_certs=/ca.pem", {}, "use rediss://"),
        ("amqp://h/", {"ca_certs": "/ca.pem"}, "use amqps://"),
        ("sqlite:///a.db", {"ca_certs": "/ca.pem"}, "sqlite:// has no TLS"),
        ("rediss://h/0?ssl_ciphers=ALL", {}, "unsupported TLS option 'ssl_ciphers'"),
        ("rediss://h/0", {"cipher": "x"}, "unknown broker TLS option 'cipher'"),
        ("rediss://h/0?ssl_keyfile=/k.pem", {}, "without certfile"),
        ("rediss://h/0?ssl_cert_reqs=always", {}, "cert_reqs must be one of"),
        ("rediss://h/0?ssl_check_hostname=maybe", {}, "check_hostname must be true or false"),
        ("rediss://h/0", {"ca_certs": 3}, "must be a file path"),
    ],
)
def test_bad_options_are_configuration_errors(
    url: str, setting: dict[str, object], fragment: str
) -> None:
    with pytest.raises(ConfigurationError, match=fragment):
        resolve(url, setting, what="broker")


def test_settings_validate_tls_options_when_created() -> None:
    with pytest.raises(ConfigurationError, match="use rediss://"):
        Settings(broker_url="redis://h/0", broker_tls={"ca_certs": "/ca.pem"})
    with pytest.raises(ConfigurationError, match="use rediss://"):
        Settings(broker_url="amqps://h/", result_backend="redis://h/0", backend_tls={"a": "b"})
    with pytest.raises(ConfigurationError, match="no result backend"):
        Settings(broker_url="amqps://h/", backend_tls={"ca_certs": "/ca.pem"})


def test_environment_form_is_a_json_object() -> None:
    conf = Settings.from_env(
        {
            "AIOTASK_BROKER_URL": "amqps://h/",
            "AIOTASK_RESULT_BACKEND": "rediss://h/0",
            "AIOTASK_BROKER_TLS": '{"ca_certs": "/ca.pem", "check_hostname": false}',
            "AIOTASK_BACKEND_TLS": '{"ca_certs": "/other.pem"}',
        }
    )
    assert for_broker(conf).tls == TLSOptions("/ca.pem", check_hostname=False)
    assert for_backend(conf, "rediss://h/0").tls == TLSOptions("/other.pem")
    with pytest.raises(ConfigurationError, match="AIOTASK_BROKER_TLS"):
        Settings.from_env({"AIOTASK_BROKER_TLS": '["ca.pem"]'})


def test_a_rediss_backend_falls_back_to_broker_tls() -> None:
    conf = Settings(broker_url="rediss://h/0", broker_tls={"ca_certs": "/ca.pem"})
    assert conf.backend_url == "rediss://h/0"
    assert for_backend(conf, "rediss://h/0").tls == TLSOptions("/ca.pem")
    # a plain backend beside a TLS broker: broker_tls is not forced onto it
    conf = conf.replace(result_backend="redis://h/1")
    assert for_backend(conf, "redis://h/1").tls is None


def test_build_context_reads_the_files_and_names_the_option(tmp_path: Path) -> None:
    missing = str(tmp_path / "secret-dir" / "ca.pem")
    with pytest.raises(ConfigurationError, match="ssl_ca_certs: No such file") as caught:
        build_context(TLSOptions(ca_certs=missing))
    assert "secret-dir" not in str(caught.value)
    context = build_context(TLSOptions(cert_reqs=ssl.CERT_NONE))
    assert context.verify_mode == ssl.CERT_NONE
    assert context.check_hostname is False
    context = build_context(TLSOptions())
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname is True


def test_an_encrypted_key_is_refused_not_prompted_for(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    key = serialization.load_pem_private_key(pki.client_key.read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pass-phrase"),
        )
    )
    options = TLSOptions(str(pki.ca), str(pki.client_cert), str(encrypted))
    with pytest.raises(ConfigurationError, match="ssl_keyfile\\) is encrypted"):
        build_context(options)


def test_contexts_are_reused_until_a_file_is_replaced(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    live = tmp_path / "live-ca.pem"
    live.write_bytes(pki.ca.read_bytes())
    options = TLSOptions(ca_certs=str(live))
    first = context_for(options)
    assert context_for(options) is first
    staged = tmp_path / "staged.pem"  # rotation: write aside, rename over
    staged.write_bytes(pki.ca.read_bytes() + pki.other_ca.read_bytes())
    staged.replace(live)
    rotated = context_for(options)
    assert rotated is not first
    assert len(rotated.get_ca_certs()) == 2


def test_hints_for_tls_connections_cut_or_never_answered() -> None:
    reset = ConnectionResetError(104, "Connection reset by peer")
    assert "client certificate" in reset_hint("rediss://h/0", reset)
    assert "plain, non-TLS port" in reset_hint("amqps://h/", TimeoutError("Timeout connecting"))
    assert reset_hint("redis://h/0", reset) == ""  # not TLS: the usual advice only
    assert reset_hint("rediss://h/0", None) == ""


#: The only modules that may open a Redis or AMQP connection: both build TLS from aiotask._tls.
CONNECTING = {
    # Sentinel( / ConnectionPool(: rediss+sentinel:// gives both the TLS options of _tls
    "aiotask/_redis/client.py": {"Redis.from_url(", "Sentinel(", "ConnectionPool("},
    "aiotask/_redis/cluster.py": {"RedisCluster("},  # its nodes get the TLS options too
    # called only by _rabbitmq_publish.open_connection, with the TLS context it built
    "aiotask/brokers/_rabbitmq_nodes.py": {"RobustTransport("},
}
CALLS = ["Redis.from_url(", "Redis(", "connect_robust(", "aio_pika.connect(", "aiormq.connect("]
CALLS += ["RobustConnection(", "RobustTransport("]
CALLS += ["RedisCluster(", "Sentinel(", "ConnectionPool(", "asyncio.open_connection("]


def test_every_connection_is_opened_where_tls_is_applied() -> None:
    """A new place that connects on its own would bypass broker_tls / backend_tls: fail here."""
    root = Path(__file__).resolve().parents[2]
    found: dict[str, set[str]] = {}
    for path in sorted((root / "aiotask").rglob("*.py")):
        text = path.read_text()
        # a call, not the definition of a function or class of that name
        calls = {
            c for c in CALLS if text.count(c) > text.count(f"def {c}") + text.count(f"class {c}")
        }
        if calls:
            found[str(path.relative_to(root))] = calls
    assert found == CONNECTING
