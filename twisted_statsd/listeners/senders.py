"""The sender allow-list (``dogstatsd_allowed_senders``): which source addresses may send.

Checked per datagram on UDP and per connection on TCP, so the check is a dict
lookup: each address's answer is kept, up to ``CACHE_SIZE`` addresses, after
which the cache starts over (a flood of spoofed UDP sources only costs the
slower network scan again).  IPv4 addresses seen as IPv4-mapped IPv6
(``::ffff:10.0.0.1``) match IPv4 ranges.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

CACHE_SIZE = 4096


class SenderAllowList:
    """Whether a source address falls in one of ``networks`` (CIDR strings)."""

    def __init__(self, networks: Iterable[str]):
        self.networks = tuple(ipaddress.ip_network(n) for n in networks)
        self._answers: dict[str, bool] = {}

    def allows(self, host: str) -> bool:
        answer = self._answers.get(host)
        if answer is None:
            answer = self._check(host)
            if len(self._answers) >= CACHE_SIZE:
                self._answers.clear()
            self._answers[host] = answer
        return answer

    def _check(self, host: str) -> bool:
        try:
            address = ipaddress.ip_address(host.partition("%")[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.networks)
