"""Which client a trusted proxy names: ``X-Forwarded-For`` and ``Forwarded`` (RFC 7239).

Plain Python, no I/O: the handshake asks ``ProxyNetworks.client_of`` for the
address that logs, limits and filters see.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping

__all__ = ["ProxyNetworks"]


class ProxyNetworks:
    """The addresses whose ``X-Forwarded-For`` / ``Forwarded`` headers are believed.

    From anyone else those headers are ignored: a client must not choose the
    address that logs, limits and filters see.
    """

    def __init__(self, cidrs: Iterable[str]) -> None:
        self.networks = tuple(ipaddress.ip_network(cidr, strict=False) for cidr in cidrs)

    def __bool__(self) -> bool:
        return bool(self.networks)

    def trusts(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self.networks)

    def client_of(self, peer: tuple[str, int], headers: Mapping[str, str]) -> tuple[str, int]:
        """The client address the trusted proxies name, or ``peer`` itself.

        The chain is read from the right (the hop nearest to us): the first
        address that is not a trusted proxy is the client. An address that
        does not parse ends the walk where it is, so a forged entry cannot
        jump the chain.
        """
        if not self.networks or not self.trusts(peer[0]):
            return peer
        hops = _forwarded_for(headers.get("forwarded", ""))
        if not hops:
            hops = [hop.strip() for hop in headers.get("x-forwarded-for", "").split(",")]
        for hop in reversed([hop for hop in hops if hop]):
            try:
                ipaddress.ip_address(hop)
            except ValueError:
                return peer
            if not self.trusts(hop):
                return (hop, 0)
        return peer


def _forwarded_for(value: str) -> list[str]:
    """The ``for=`` addresses of an RFC 7239 ``Forwarded`` header, ports and brackets removed."""
    found = []
    for element in value.split(","):
        for pair in element.split(";"):
            name, _, node = pair.strip().partition("=")
            if name.lower() != "for":
                continue
            node = node.strip().strip('"')
            if node.startswith("["):  # [2001:db8::1]:4711
                node = node[1 : node.find("]")] if "]" in node else ""
            elif node.count(":") == 1:  # 192.0.2.60:4711
                node = node.partition(":")[0]
            found.append(node)
    return found
