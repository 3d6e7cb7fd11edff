"""What crosses the proxy: end-to-end headers only (RFC 9110 §7.6.1), plus Via and
X-Forwarded-For/-Proto. Pure."""

from __future__ import annotations

from collections.abc import Iterable

VIA = "1.1 modelfleet-activator"
# Hop-by-hop by RFC 9110 §7.6.1 (and the legacy Proxy-Connection), plus Expect: the
# activator's server answered any 100-continue itself; Content-Length is recomputed by
# neither side, so it passes (the body passes byte for byte, compressed or not).
HOP_BY_HOP = frozenset(
    {
        "connection",
        "proxy-connection",
        "keep-alive",
        "te",
        "transfer-encoding",
        "upgrade",
        "trailer",
        "proxy-authenticate",
        "proxy-authorization",
        "expect",
    }
)

Pairs = list[tuple[str, str]]


def end_to_end(headers: Iterable[tuple[str, str]]) -> Pairs:
    """``headers`` without the hop-by-hop ones, nor those the Connection header names."""
    items = list(headers)
    named = {
        token.strip().lower()
        for name, value in items
        if name.lower() == "connection"
        for token in value.split(",")
        if token.strip()
    }
    return [(n, v) for n, v in items if n.lower() not in HOP_BY_HOP and n.lower() not in named]


def _append(pairs: Pairs, name: str, value: str) -> Pairs:
    """One ``name`` header: the existing values, then ``value`` (a list, as RFC 9110 reads
    repeated headers)."""
    existing = [v for n, v in pairs if n.lower() == name.lower()]
    kept = [(n, v) for n, v in pairs if n.lower() != name.lower()]
    return [*kept, (name, ", ".join([*existing, value]))]


def to_backend(headers: Iterable[tuple[str, str]], client_ip: str | None) -> Pairs:
    out = _append(end_to_end(headers), "Via", VIA)
    if client_ip:
        out = _append(out, "X-Forwarded-For", client_ip)
    if not any(n.lower() == "x-forwarded-proto" for n, _ in out):
        out.append(("X-Forwarded-Proto", "http"))
    return out


def to_client(headers: Iterable[tuple[str, str]]) -> Pairs:
    return _append(end_to_end(headers), "Via", VIA)
