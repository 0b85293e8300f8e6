"""Who the client really is: the peer address, or, only when the peer is a configured reverse proxy, the address
that proxy says it forwarded for.

Why: uvicorn believes ``X-Forwarded-For`` from any local peer by default, so anyone able to send a request
through (or beside) a local proxy could pick the address the sign-in limits and the audit trail see. The API is
served with uvicorn's proxy handling off (``api.app.server_config``) and asks here instead.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache

from fastapi import Request

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@lru_cache(maxsize=8)
def parse_proxies(spec: str) -> tuple[Network, ...]:
    """``CAREWATCH_TRUSTED_PROXIES`` ("10.0.0.5, 172.18.0.0/16") as networks; ValueError for a bad entry."""
    return tuple(ipaddress.ip_network(part.strip(), strict=False) for part in spec.split(",") if part.strip())


def _trusted(address: str, proxies: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in proxies)


def client_address(request: Request) -> str:
    """The client's address. ``X-Forwarded-For`` is read right to left, skipping trusted proxies, and only when
    the peer itself is a trusted proxy; a malformed hop ends the walk at the last address we can vouch for."""
    peer = request.client.host if request.client else "unknown"
    settings = getattr(request.app.state, "settings", None)
    proxies = parse_proxies(settings.trusted_proxies) if settings is not None else ()
    if not proxies or not _trusted(peer, proxies):
        return peer
    hops = [h.strip() for h in ",".join(request.headers.getlist("x-forwarded-for")).split(",") if h.strip()]
    address = peer
    for hop in reversed(hops):
        try:
            ipaddress.ip_address(hop)
        except ValueError:
            break
        address = hop
        if not _trusted(hop, proxies):
            break
    return address
