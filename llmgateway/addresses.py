"""Triton addresses as configured: one or more `host:port`, comma-separated.

A host is an IP address (one endpoint) or a name, which may resolve to several
addresses (a Kubernetes headless Service: one per ready pod), each an endpoint.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

# host:port, or [IPv6]:port. Host names as DNS allows them (letters, digits, '-', '.', '_').
_ADDRESS = re.compile(
    r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9._-]+)):(?P<port>\d{1,5})$"
)
# What separates addresses in a list: commas, optionally with whitespace (newlines too).
_SEPARATORS = re.compile(r"[\s,]+")


@dataclass(frozen=True, slots=True)
class Target:
    """One configured address: a host (IP or name) and a port."""

    host: str
    port: int

    @property
    def is_ip(self) -> bool:
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return False
        return True

    def __str__(self) -> str:
        return address_join(self.host, self.port)


def address_join(host: str, port: int) -> str:
    """`host:port`, with an IPv6 host in brackets (what gRPC dials)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def targets_parse(text: str) -> tuple[Target, ...]:
    """The addresses in `text` ("a:8001, 10.0.0.2:8001"), in order, without repeats.

    Raises ValueError naming the first malformed address, or when there is none.
    """
    targets: list[Target] = []
    for item in _SEPARATORS.split(text.strip()):
        if not item:
            continue
        match = _ADDRESS.match(item)
        port = int(match.group("port")) if match else 0
        if match is None or not 0 < port < 65536:
            raise ValueError(f"{item!r} is not host:port")
        host = match.group("v6") or match.group("host")
        if match.group("v6"):
            try:
                ipaddress.IPv6Address(host)
            except ValueError:
                raise ValueError(f"{item!r}: {host!r} is not an IPv6 address") from None
        target = Target(host, port)
        if target not in targets:
            targets.append(target)
    if not targets:
        raise ValueError("no Triton address given")
    return tuple(targets)
