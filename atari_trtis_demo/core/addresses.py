"""Host names and IP addresses, for the player's ``--host`` and ``--web`` and serve's ``--address`` alike."""

from __future__ import annotations

import ipaddress
import socket


def ip_addresses(host: str, port: int | None = None) -> list[str]:
    """The IP addresses of ``host`` (an IP literal: itself), in the resolver's order, without repeats.

    Raises OSError when the name does not resolve; each command words that for its own flag.
    """
    try:
        return [str(ipaddress.ip_address(host))]
    except ValueError:
        pass
    found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in found))


def is_loopback(address: str) -> bool:
    """127.0.0.0/8, ::1 (bracketed or not) or localhost: reachable from this machine only (other names are not)."""
    bare = address.strip("[]")
    if bare.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(bare).is_loopback
    except ValueError:
        return False
