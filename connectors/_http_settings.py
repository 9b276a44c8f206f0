"""The http connector's settings: its ``[services.connector]`` table, checked once, at start-up.

Why this is a module of its own: validating the table is start-up work and the connector's
hot path is per-request work, and they change for different reasons (a new setting or a new
refusal here; delivery, retries, the breaker and the answer checks in :mod:`connectors.http`).
:func:`parse_settings` turns the table into a frozen :class:`Settings` or refuses it with a
``SettingsError`` that names the key, so a wrong config stops the gateway before it serves.
It also does, once, what every request would otherwise repeat: the origin for the pool, the
percent-encoded request target, and the static header fields (fixed, configured, Basic auth from
credentials in the url) encoded and checked by the client's :func:`check_header`.

The settings themselves, with their defaults, are documented in :mod:`connectors.http`, the
module the ``gateway.connectors`` entry point names.
"""

from __future__ import annotations

import base64
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import SplitResult, quote, unquote, urlsplit

from connectors._http11_request import check_header
from gateway.connector import ConnectorContext, SettingsError

__all__ = ["CONTENT_TYPES", "Settings", "parse_settings"]

_KNOWN = frozenset(
    {
        "url", "send", "timeout_seconds", "connect_timeout_seconds", "headers",
        "max_response_bytes", "max_connections", "retries", "ca_file", "client_cert",
        "client_key", "circuit_breaker",
    }
)  # fmt: skip
_MANAGED_HEADERS = frozenset(
    {"content-type", "content-length", "host", "idempotency-key", "x-exchange-id",
     "transfer-encoding", "connection"}
)  # fmt: skip
CONTENT_TYPES = {"envelope": "application/jose+json", "payload": "application/json"}
# Sent with every request. Accept-Encoding: identity asks for an uncompressed answer (the body cap
# then bounds what is held, and no decompressor runs on provider input).
_FIXED_HEADERS = (("User-Agent", "dtc-gateway"), ("Accept", "application/json"),
                  ("Accept-Encoding", "identity"))  # fmt: skip


@dataclass(frozen=True, slots=True)
class Settings:
    """The checked table, plus what every request reuses (origin, target, static headers)."""

    # Not in the repr: the url may hold credentials (and its query an API key), the headers
    # a token; a repr ends up in logs and tracebacks.
    url: str = field(repr=False)
    origin: str  # scheme://host[:port]
    target: str = field(repr=False)  # path?query, percent-encoded
    # fixed + configured (+ credentials in url)
    static_headers: tuple[tuple[bytes, bytes], ...] = field(repr=False)
    send: str
    timeout: float
    connect_timeout: float
    headers: Mapping[str, str] = field(repr=False)
    max_response_bytes: int
    max_connections: int
    retries: int
    ca_file: str | None
    client_cert: str | None
    client_key: str | None
    failure_threshold: int
    open_seconds: float


def _number(settings: Mapping[str, Any], key: str, default: float, *, integer: bool) -> Any:
    value = settings.get(key, default)
    ok_type = isinstance(value, int) if integer else isinstance(value, int | float)
    if isinstance(value, bool) or not ok_type or not math.isfinite(value) or value <= 0:
        kind = "a positive integer" if integer else "a positive number"
        raise SettingsError(f"http connector: {key!r} must be {kind}")
    return value


def _path(settings: Mapping[str, Any], key: str, config_dir: str) -> str | None:
    value = settings.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise SettingsError(f"http connector: {key!r} must be a file path")
    return os.path.join(config_dir, value)


def parse_settings(settings: Mapping[str, Any], context: ConnectorContext) -> Settings:
    """Validate the settings table; every refusal names the key (checked in table order)."""
    unknown = sorted(set(settings) - _KNOWN)
    if unknown:
        raise SettingsError(f"http connector: unknown setting {unknown[0]!r}")
    url, parts = _url(settings)
    send = settings.get("send", "envelope")
    if send not in CONTENT_TYPES:
        raise SettingsError("http connector: 'send' must be 'envelope' or 'payload'")
    headers = _headers(settings)
    static = _static_headers(parts, headers)
    retries = settings.get("retries", 0)
    if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= 10:
        raise SettingsError("http connector: 'retries' must be an integer from 0 to 10")
    breaker = _breaker(settings)
    tls = _tls(settings, parts, context.config_dir)
    return Settings(
        url=url,
        origin=f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}",
        target=_target(parts),
        static_headers=static,
        send=send,
        timeout=float(_number(settings, "timeout_seconds", 10, integer=False)),
        connect_timeout=float(_number(settings, "connect_timeout_seconds", 3, integer=False)),
        headers=dict(headers),
        max_response_bytes=_number(settings, "max_response_bytes", 1 << 20, integer=True),
        max_connections=_number(settings, "max_connections", 100, integer=True),
        retries=retries,
        ca_file=tls["ca_file"],
        client_cert=tls["client_cert"],
        client_key=tls["client_key"],
        failure_threshold=_number(breaker, "failure_threshold", 5, integer=True),
        open_seconds=float(_number(breaker, "open_seconds", 30, integer=False)),
    )


def _url(settings: Mapping[str, Any]) -> tuple[str, SplitResult]:
    url = settings.get("url")
    if not isinstance(url, str):
        raise SettingsError("http connector: 'url' is required (an http:// or https:// URL)")
    parts = urlsplit(url)
    try:
        port_ok = parts.port is None or parts.port > 0
    except ValueError:  # not a number, or out of range
        port_ok = False
    if parts.scheme not in ("http", "https") or not parts.hostname or not port_ok:
        raise SettingsError("http connector: 'url' must be an absolute http:// or https:// URL")
    return url, parts


def _headers(settings: Mapping[str, Any]) -> Mapping[str, str]:
    headers = settings.get("headers", {})
    if not isinstance(headers, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) and "\r" not in k + v and "\n" not in k + v
        for k, v in headers.items()
    ):
        raise SettingsError("http connector: 'headers' must map names to single-line strings")
    clash = sorted(k for k in headers if k.lower() in _MANAGED_HEADERS)
    if clash:
        raise SettingsError(f"http connector: 'headers' may not set {clash[0]!r}")
    return headers


def _breaker(settings: Mapping[str, Any]) -> Mapping[str, Any]:
    breaker = settings.get("circuit_breaker", {})
    if not isinstance(breaker, Mapping) or set(breaker) - {"failure_threshold", "open_seconds"}:
        raise SettingsError(
            "http connector: 'circuit_breaker' takes only 'failure_threshold' and 'open_seconds'"
        )
    return breaker


def _tls(settings: Mapping[str, Any], parts: SplitResult, config_dir: str) -> dict[str, str | None]:
    """The TLS files (resolved against the config directory); they need https, and a client
    certificate comes with its key."""
    tls = {k: _path(settings, k, config_dir) for k in ("ca_file", "client_cert", "client_key")}
    if any(tls.values()) and parts.scheme != "https":
        raise SettingsError(
            "http connector: 'ca_file'/'client_cert'/'client_key' need an https url"
        )
    if (tls["client_cert"] is None) != (tls["client_key"] is None):
        raise SettingsError("http connector: 'client_cert' and 'client_key' go together")
    return tls


def _target(parts: SplitResult) -> str:
    """The request target, percent-encoded where the URL was not (as aiohttp/yarl sends it)."""
    target = quote(parts.path or "/", safe="/%:@!$&'()*+,;=~")
    if parts.query:
        target += "?" + quote(parts.query, safe="/?%:@!$&'()*+,;=~")
    return target


def _static_headers(
    parts: SplitResult, configured: Mapping[str, str]
) -> tuple[tuple[bytes, bytes], ...]:
    """The headers every request carries, encoded and checked once; configured ones win."""
    overridden = {name.lower() for name in configured}
    pairs = [(k, v) for k, v in _FIXED_HEADERS if k.lower() not in overridden]
    pairs += configured.items()
    if parts.username is not None:  # credentials in the url: Basic auth, as aiohttp did
        if any(k.lower() == "authorization" for k in configured):
            raise SettingsError(
                "http connector: 'headers' may not set 'Authorization' when the url has credentials"
            )
        user_pass = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        try:
            token = base64.b64encode(user_pass.encode("latin-1")).decode("ascii")
        except UnicodeEncodeError:
            raise SettingsError("http connector: 'url' credentials must be Latin-1") from None
        pairs.append(("Authorization", f"Basic {token}"))
    try:
        return tuple(check_header(name, value) for name, value in pairs)
    except ValueError:
        raise SettingsError(
            "http connector: 'headers' must map names to single-line strings"
        ) from None
