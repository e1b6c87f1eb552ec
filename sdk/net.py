"""Network addresses: whether a server listens on this computer only."""

from __future__ import annotations

import ipaddress


def is_loopback(address: str) -> bool:
    """Whether ``address`` only listens on this computer (127.0.0.0/8, ::1, ``localhost``)."""
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False
