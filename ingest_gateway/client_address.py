"""Which address a request came from, for the cookieless visitor id only.

Behind NGINX every request's direct peer is NGINX, which sets ``X-Real-IP`` to the address
it was connected from (``infra/nginx/routes.conf``). That header is believed only when the
peer is a trusted proxy (a setting, loopback by default): anyone else could write any
address into it. ``X-Forwarded-For`` and payload fields (Umami's ``ip``) are never read:
they are whatever the client wrote. The address is used to derive a visitor id and then
dropped; no caller may log or store it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def trusted_networks(items: Iterable[str]) -> tuple[Network, ...]:
    """Addresses or CIDR networks (``127.0.0.1``, ``172.16.0.0/12``); ValueError for junk."""
    return tuple(ipaddress.ip_network(item.strip(), strict=False) for item in items)


def _is_trusted(peer: str | None, trusted: tuple[Network, ...]) -> bool:
    if not peer:
        return False
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:  # a Unix socket peer, say
        return False
    return any(address in network for network in trusted)


def address_of(peer: str | None, real_ip: str | None, trusted: tuple[Network, ...]) -> str:
    """The client's address: ``X-Real-IP`` (``real_ip``) when the direct ``peer`` is a
    trusted proxy and the header is there, else the peer itself ("" when unknown)."""
    if real_ip and _is_trusted(peer, trusted):
        return real_ip.strip()
    return peer or ""
