"""TLS for rediss:// and amqps://: options, the one SSLContext builder, errors that name TLS.

Options come from a setting (`broker_tls` / `backend_tls`, a mapping) and from the URL query
(`?ssl_ca_certs=...&ssl_certfile=...&ssl_keyfile=...&ssl_cert_reqs=...&ssl_check_hostname=...`,
redis-py's names, on both schemes; for amqps:// also aio-pika's `cafile`, `certfile`, `keyfile`,
`no_verify_ssl`). The URL wins key by key. The keys are taken out of the URL handed to the client
library: the context built here is the only one used, so a key the library would read and we
would not (`ssl_ciphers`) is refused rather than silently ignored.

A failed handshake is a configuration problem (wrong CA, wrong host name, missing client
certificate, a plain port): `permanent()` tells callers not to retry it for minutes, and
`describe()` turns it into one line that says TLS, where, why and which option to check.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit, urlunsplit

from aiotask.exceptions import ConfigurationError

if TYPE_CHECKING:
    from collections.abc import Mapping

    from aiotask.settings import Settings

TLS_SCHEMES = frozenset({"rediss", "rediss+cluster", "rediss+sentinel", "amqps"})
#: option -> what its value is, for error messages and docs
OPTIONS = {
    "ca_certs": "PEM file of the CA(s) that signed the server certificate",
    "certfile": "PEM file of the client certificate (mutual TLS)",
    "keyfile": "PEM file of the client certificate's private key (unencrypted)",
    "cert_reqs": "required | optional | none (verify the server certificate)",
    "check_hostname": "true | false (the certificate must name the host of the URL)",
}
#: URL query keys -> option. redis-py's names; aio-pika's own names are read on amqps:// only.
_QUERY = {f"ssl_{name}": name for name in OPTIONS}
_AMQP_QUERY = {"cafile": "ca_certs", "certfile": "certfile", "keyfile": "keyfile"}
_CERT_REQS = {
    "required": ssl.CERT_REQUIRED,
    "optional": ssl.CERT_OPTIONAL,
    "none": ssl.CERT_NONE,
}
_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}
#: Errors of a connection cut mid-handshake (a restarting server): worth a retry.
_TRANSIENT = (ssl.SSLEOFError, ssl.SSLZeroReturnError, ssl.SSLSyscallError)


@dataclass(frozen=True, slots=True)
class TLSOptions:
    """What the SSLContext of one server is built from; equal options share a client pool.
    The file locations are left out of its repr (client libraries put it in error messages),
    as they are masked in printed URLs."""

    ca_certs: str | None = field(default=None, repr=False)
    certfile: str | None = field(default=None, repr=False)
    keyfile: str | None = field(default=None, repr=False)
    cert_reqs: ssl.VerifyMode = ssl.CERT_REQUIRED
    check_hostname: bool = True


@dataclass(frozen=True, slots=True)
class Resolved:
    """A URL without its TLS query keys, and its TLS options (None: not a TLS scheme)."""

    url: str
    tls: TLSOptions | None


def resolve(url: str, setting: Mapping[str, object], *, what: str) -> Resolved:
    """Merge the setting and the URL query into TLSOptions; ConfigurationError when invalid."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    kept, from_url = _split_query(parts.query, amqp=scheme == "amqps", what=what)
    clean = urlunsplit(parts._replace(query="&".join(kept))) if from_url else url
    if scheme not in TLS_SCHEMES:
        if from_url or setting:
            names = ", ".join(sorted({*from_url, *setting}))
            fix = {
                "redis": "use rediss:// instead of redis://",
                "redis+cluster": "use rediss+cluster:// instead of redis+cluster://",
                "redis+sentinel": "use rediss+sentinel:// instead of redis+sentinel://",
                "amqp": "use amqps:// instead of amqp://",
            }
            raise ConfigurationError(
                f"{what} TLS options ({names}) need a TLS URL: "
                f"{fix.get(scheme, f'{scheme}:// has no TLS (rediss:// and amqps:// have)')}"
            )
        return Resolved(url, None)
    merged = {_option(key, what): value for key, value in setting.items()}
    merged.update(from_url)
    return Resolved(clean, _options(merged, what))


def for_broker(settings: Settings, url: str | None = None) -> Resolved:
    """The broker URL (or `url`, the same server) resolved with `broker_tls`."""
    return resolve(url or settings.broker_url, settings.broker_tls, what="broker")


def for_backend(settings: Settings, url: str) -> Resolved:
    """A result backend URL resolved with `backend_tls`, or `broker_tls` when that is empty.

    The fallback serves the common case of one TLS server (or one private CA) for both; set
    `backend_tls` to anything (e.g. {"cert_reqs": "required"}) to stop it.
    """
    setting = settings.backend_tls
    if not setting and urlsplit(url).scheme.lower() in TLS_SCHEMES:
        setting = settings.broker_tls
    return resolve(url, setting, what="result backend")


def build_context(options: TLSOptions) -> ssl.SSLContext:
    """A client SSLContext; the files are read now (a rotated file is used by new contexts)."""
    try:
        # cafile=None: the system's CA store, as for any https client
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=options.ca_certs)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigurationError(_load_error("ssl_ca_certs", exc)) from None
    context.check_hostname = options.check_hostname and options.cert_reqs != ssl.CERT_NONE
    context.verify_mode = options.cert_reqs
    if options.certfile:
        try:
            # with no password callback OpenSSL would prompt on the terminal: a hung worker
            context.load_cert_chain(options.certfile, options.keyfile, password=_encrypted_key)
        except _EncryptedKey:
            raise ConfigurationError(
                "the TLS private key (ssl_keyfile) is encrypted: aiotask takes an unencrypted "
                "key, readable by the worker's user only (docs/tls.md)"
            ) from None
        except (OSError, ssl.SSLError) as exc:
            raise ConfigurationError(_load_error("ssl_certfile / ssl_keyfile", exc)) from None
    return context


class _EncryptedKey(Exception):
    pass


def _encrypted_key() -> bytes:
    raise _EncryptedKey


#: (options, the files' stat) -> context. Loading the system CA store costs milliseconds on the
#: event loop; a context is rebuilt only when a file changed (certificate rotation).
_contexts: dict[tuple[TLSOptions, tuple[tuple[int, int, int], ...]], ssl.SSLContext] = {}


def context_for(options: TLSOptions) -> ssl.SSLContext:
    """build_context(), cached until one of the option's files is replaced or changed."""
    stamps = tuple(_stamp(p) for p in (options.ca_certs, options.certfile, options.keyfile) if p)
    key = (options, stamps)
    context = _contexts.get(key)
    if context is None:
        context = build_context(options)
        for old in [k for k in _contexts if k[0] == options]:
            del _contexts[old]  # the files it was built from were replaced
        _contexts[key] = context
    return context


def _stamp(path: str) -> tuple[int, int, int]:
    try:
        st = os.stat(path)
    except OSError:
        return (0, 0, 0)  # build_context() names the problem
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def failure(exc: BaseException) -> ssl.SSLError | None:
    """The TLS error behind `exc` (client libraries wrap it once or twice), if any."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, ssl.SSLError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def permanent(exc: BaseException) -> bool:
    """True when `exc` is a TLS failure that waiting cannot fix (certificates, host, port)."""
    err = failure(exc)
    return err is not None and not isinstance(err, _TRANSIENT)


def describe(err: ssl.SSLError, server: str, url: str) -> str:
    """One line: 'TLS handshake with redis 127.0.0.1:6380 failed: <why> (<what to check>)'."""
    parts = urlsplit(url)
    where = f"{parts.hostname or '?'}:{parts.port or _DEFAULT_PORTS.get(parts.scheme, '?')}"
    if isinstance(err, ssl.SSLCertVerificationError):
        why = f"certificate verify failed: {err.verify_message or err.reason}"
        mismatch = "mismatch" in str(err.verify_message).lower()
        hint = _HOSTNAME_HINT if mismatch else _CA_HINT
    else:
        reason = str(err.reason or "").upper()
        why = (err.reason or str(err)).lower().replace("_", " ")
        hint = next((h for keys, h in _REASON_HINTS if any(k in reason for k in keys)), _HINT)
    return f"TLS handshake with {server} {where} failed: {why} ({hint})"


def reset_hint(url: str, exc: BaseException | None) -> str:
    """Advice for a TLS connection dropped right after connecting (or never answered), else "".

    With TLS 1.3 a server that refuses the client's certificate (or its absence) tells so
    after the client's side of the handshake is done; the alert is often lost in the reset.
    """
    if exc is None or urlsplit(url).scheme.lower() not in TLS_SCHEMES:
        return ""
    text = str(exc).lower()
    if "reset by peer" in text or "closed by server" in text:
        return (
            " (over TLS this often means the server refused the client certificate: it may "
            "require one, ssl_certfile and ssl_keyfile, signed by a CA it trusts)"
        )
    if "no master found" in text:  # Sentinel: every sentinel failed (their errors are dropped)
        return (
            " (no sentinel could be asked over TLS, or none knows the service: check ?service= "
            "and the TLS options ssl_ca_certs, ssl_certfile and ssl_keyfile)"
        )
    if "timeout" in text or "timed out" in text:  # a plain redis-server ignores a ClientHello
        return " (over TLS a connect timeout can also mean a plain, non-TLS port)"
    return ""


_DEFAULT_PORTS = {"rediss": 6379, "rediss+cluster": 6379, "rediss+sentinel": 26379, "amqps": 5671}
_CA_HINT = "check ssl_ca_certs: it must hold the CA that signed the server's certificate"
_HOSTNAME_HINT = (
    "the server's certificate does not name the host in the URL: connect by a name or IP "
    "it lists, or set ssl_check_hostname=false"
)
_HINT = "check the TLS options ssl_ca_certs, ssl_certfile and ssl_keyfile"
_REASON_HINTS = (
    (
        ("CERTIFICATE_REQUIRED", "HANDSHAKE_FAILURE"),
        "the server requires a client certificate: set ssl_certfile and ssl_keyfile",
    ),
    (
        ("UNKNOWN_CA", "BAD_CERTIFICATE", "CERTIFICATE_UNKNOWN", "DECRYPT_ERROR"),
        "the server rejected the client certificate (ssl_certfile): it must be signed by a CA "
        "the server trusts",
    ),
    (
        ("WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG"),
        "is that port a TLS port? a plain port needs redis:// or amqp://",
    ),
)


def _split_query(query: str, *, amqp: bool, what: str) -> tuple[list[str], dict[str, object]]:
    """(query parts to keep, raw values of our options found in the query)."""
    kept: list[str] = []
    found: dict[str, object] = {}
    for part in query.split("&") if query else ():
        raw_key, _, raw_value = part.partition("=")
        key = unquote(raw_key.replace("+", " ")).strip().lower()
        value = unquote(raw_value.replace("+", " "))
        if key in _QUERY:
            found[_QUERY[key]] = value
        elif amqp and key in _AMQP_QUERY:
            found[_AMQP_QUERY[key]] = value
        elif amqp and key == "no_verify_ssl":
            if value.strip() not in {"", "0"}:
                found["cert_reqs"] = "none"
        elif key.startswith("ssl_") or (amqp and key in {"capath", "cadata"}):
            raise ConfigurationError(
                f"unsupported TLS option {key!r} in the {what} URL: supported are "
                f"{', '.join(sorted(_QUERY))} (see docs/tls.md)"
            )
        else:
            kept.append(part)
    return kept, found


def _option(key: str, what: str) -> str:
    name = key.strip().lower().removeprefix("ssl_")
    if name not in OPTIONS:
        raise ConfigurationError(
            f"unknown {what} TLS option {key!r}: known options are {', '.join(OPTIONS)}"
        )
    return name


def _options(values: Mapping[str, object], what: str) -> TLSOptions:
    paths = {k: _path(k, values.get(k), what) for k in ("ca_certs", "certfile", "keyfile")}
    if paths["keyfile"] and not paths["certfile"]:
        raise ConfigurationError(
            f"{what} TLS option keyfile is set without certfile: a client certificate needs both"
        )
    cert_reqs = _cert_reqs(values.get("cert_reqs", ssl.CERT_REQUIRED), what)
    check = _bool(values.get("check_hostname", True), "check_hostname", what)
    return TLSOptions(paths["ca_certs"], paths["certfile"], paths["keyfile"], cert_reqs, check)


def _path(name: str, value: object, what: str) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ConfigurationError(f"{what} TLS option {name} must be a file path (a string)")
    return value


def _cert_reqs(value: object, what: str) -> ssl.VerifyMode:
    if isinstance(value, int) and not isinstance(value, bool) and value in _CERT_REQS.values():
        return ssl.VerifyMode(value)  # ssl.CERT_REQUIRED, as Celery's broker_use_ssl has it
    if isinstance(value, str):
        mode = _CERT_REQS.get(value.strip().lower().removeprefix("cert_"))
        if mode is not None:
            return mode
    raise ConfigurationError(
        f"{what} TLS option cert_reqs must be one of required, optional, none; got {value!r}"
    )


def _bool(value: object, name: str, what: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ConfigurationError(f"{what} TLS option {name} must be true or false; got {value!r}")


def _load_error(option: str, exc: BaseException) -> str:
    # The path is not repeated: it is in the user's own settings, and URLs mask it.
    reason = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or str(exc)
    return f"cannot load the TLS file(s) of {option}: {reason}"
