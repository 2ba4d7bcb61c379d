"""``svckit.proxies.throttle_key``: what a per-address limit counts a client under."""

from __future__ import annotations

import pytest
from svckit.proxies import throttle_key


@pytest.mark.parametrize(
    ("address", "key"),
    [
        ("203.0.113.9", "203.0.113.9"),
        ("2001:db8:1:2:aaaa:bbbb:cccc:dddd", "2001:db8:1:2::/64"),
        ("2001:DB8:1:2::1", "2001:db8:1:2::/64"),  # one spelling per /64
        ("2001:db8:1:3::1", "2001:db8:1:3::/64"),
        ("::ffff:203.0.113.9", "203.0.113.9"),  # IPv4-mapped: the IPv4 client it is
        ("::1", "::/64"),
        ("not-an-address", "not-an-address"),
    ],
)
def test_an_ipv6_address_counts_as_its_64(address: str, key: str) -> None:
    assert throttle_key(address) == key
