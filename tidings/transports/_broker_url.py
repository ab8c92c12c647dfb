"""What the ``kafka://`` and ``nats://`` URLs share: a scheme, optional userinfo, a
comma-separated list of ``host:port`` (IPv6 in brackets) and ``name=value`` options.
Every refusal is a ConfigError that shows the URL with its secrets hidden."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from tidings.errors import ConfigError

__all__ = ["BrokerURL", "split_broker_url"]


@dataclass(frozen=True, slots=True)
class BrokerURL:
    userinfo: str  # before the '@', still percent-encoded; '' when absent
    hosts: tuple[str, ...]  # each 'host:port', the default port filled in
    query: dict[str, str]  # the options; the last value of a repeated one
    shown: str  # the URL as errors quote it: userinfo and secret options hidden


def split_broker_url(
    url: str,
    *,
    scheme: str,
    label: str,
    server: str,
    default_port: int,
    example: str,
    secrets: tuple[str, ...],
) -> BrokerURL:
    """Split and check ``url`` of ``scheme`` (``label`` names it in errors, ``server``
    names one of its hosts); the ``secrets`` options are hidden in every message."""
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise ConfigError(f"not a valid {label} URL ({exc}); e.g. {example}") from None
    if parts.scheme != scheme:
        raise ConfigError(f"not a {label} URL (its scheme is {parts.scheme!r}); e.g. {example}")
    userinfo, _, hostlist = parts.netloc.rpartition("@")
    shown = url.replace(userinfo, "***") if userinfo else url
    if secrets:
        shown = re.sub(rf"([?&](?:{'|'.join(secrets)})=)[^&#]*", r"\1***", shown)
    if not hostlist:
        raise ConfigError(f"the {label} URL {shown!r} names no {server}; e.g. {example}")
    if parts.path not in ("", "/"):
        raise ConfigError(
            f"the {label} URL {shown!r} has a path {parts.path!r}; options go in the query, "
            f"e.g. {example}"
        )
    try:
        raw = parse_qs(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError:
        raise ConfigError(f"the query of {shown!r} is not name=value&...; e.g. {example}") from None
    hosts = tuple(
        _host_port(item.strip(), default_port, shown, server, example)
        for item in hostlist.split(",")
    )
    return BrokerURL(userinfo, hosts, {k: v[-1] for k, v in raw.items()}, shown)


def _host_port(item: str, default_port: int, shown: str, server: str, example: str) -> str:
    host, port = item, str(default_port)
    if host.startswith("[") and "]" in host:  # [::1] or [::1]:9092
        end = host.index("]") + 1
        host, rest = host[:end], host[end:]
        if rest:
            port = rest[1:] if rest.startswith(":") else "x"
    elif ":" in host:
        host, _, port = host.rpartition(":")
    if not host or not port.isdecimal() or not 0 < int(port) < 65536:
        raise ConfigError(
            f"{server} address {item!r} in {shown!r} is not host:port; e.g. {example}"
        )
    return f"{host}:{int(port)}"
