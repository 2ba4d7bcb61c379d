"""A service bound as the chart binds it answers over IPv6 and over IPv4, on its port and its metrics port.

In an IPv6-only cluster a pod has only an IPv6 address: the kubelet's probes, the Services and the
peers reach it there. The chart set ``BIND_HOST=0.0.0.0`` for every component, so every listener took
IPv4 only: nothing was reachable, the probes failed and no pod ever became ready. The audit service
(the one with the fewest peers) is started here with the ``BIND_HOST`` the chart renders and reached at
``[::1]`` and at ``127.0.0.1``, on both of its listeners.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import helm_python as helm
import pytest

from testkit.fixtures import ServiceProcess, ServiceRedis, migrate_schema
from tests.packaging.support import MINIMAL, Obj, deep_merge, render
from tests.packaging.test_ops_values import schema_refuses
from tests.packaging.test_service_settings import rendered_settings

AUDIT_PACKAGE = Path(__file__).resolve().parents[2] / "services" / "audit" / "audit"


def answers(family: socket.AddressFamily, address: str, port: int) -> bool:
    """Whether ``address:port`` answers an HTTP request over ``family`` (a refused connection: no)."""
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        try:
            sock.connect((address, port))
        except OSError:
            return False
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n")
        return sock.recv(12).startswith(b"HTTP/1.")


@pytest.fixture
async def audit_as_rendered(
    database_url: str, service_env: dict[str, str], service_redis: ServiceRedis
) -> AsyncIterator[ServiceProcess]:
    if not socket.has_ipv6:
        pytest.skip("this Python has no IPv6")
    await migrate_schema(database_url, "audit", AUDIT_PACKAGE)
    bind_host = rendered_settings(MINIMAL, "audit").bind_host
    env = {**service_redis.runtime_env(service_env, "audit"), "AUDIT_VERIFY_INTERVAL_SECONDS": "0"}
    process = ServiceProcess("audit", env, bind_host=bind_host)
    await asyncio.to_thread(process.start, "/healthz")
    yield process
    await asyncio.to_thread(process.stop)


def test_the_rendered_bind_host_listens_on_both_families(audit_as_rendered: ServiceProcess) -> None:
    service = audit_as_rendered
    reached = {
        (family.name, port_name): answers(family, address, port)
        for family, address in ((socket.AF_INET6, "::1"), (socket.AF_INET, "127.0.0.1"))
        for port_name, port in (("port", service.port), ("metrics", service.metrics_port))
    }
    assert all(reached.values()), (service.env["BIND_HOST"], reached)


DUAL_STACK = deep_merge(
    MINIMAL, {"network": {"ipFamilyPolicy": "PreferDualStack", "ipFamilies": ["IPv6", "IPv4"]}}
)


def services_of(objects: list[Obj]) -> list[Obj]:
    return [o for o in objects if o["kind"] == "Service"]


def test_every_service_carries_the_ip_families_asked_for() -> None:
    values = deep_merge(DUAL_STACK, {"postgresql": {"enabled": True}, "redis": {"enabled": True}})
    found = {
        o["metadata"]["name"]: (o["spec"].get("ipFamilyPolicy"), tuple(o["spec"].get("ipFamilies", ())))
        for o in services_of(render(values))
    }
    assert any(name.endswith("-postgresql") for name in found)
    assert any(n.endswith("-redis") for n in found)
    assert set(found.values()) == {("PreferDualStack", ("IPv6", "IPv4"))}, found
    # unset: the cluster's default (SingleStack of its primary family), nothing written
    assert all(
        "ipFamilyPolicy" not in o["spec"] and "ipFamilies" not in o["spec"]
        for o in services_of(render(MINIMAL))
    )


def test_two_families_need_a_dual_stack_policy() -> None:
    values = deep_merge(MINIMAL, {"network": {"ipFamilies": ["IPv4", "IPv6"]}})
    with pytest.raises(helm.HelmError, match="PreferDualStack or RequireDualStack"):
        render(values)


def test_bind_host_is_every_address_or_every_ipv4_address() -> None:
    assert rendered_settings(
        deep_merge(MINIMAL, {"network": {"bindHost": "0.0.0.0"}}), "gateway"
    ).bind_host == ("0.0.0.0")
    for wrong in ("127.0.0.1", "::1", "[::]", "*"):
        assert "bindHost" in schema_refuses(deep_merge(MINIMAL, {"network": {"bindHost": wrong}})), wrong
    assert "ipFamilies" in schema_refuses(deep_merge(MINIMAL, {"network": {"ipFamilies": ["IPv5"]}}))


def test_network_policies_take_cidrs_of_both_families() -> None:
    """A dual-stack cluster's external servers have an address of each family: both become ipBlocks,
    as written (an IPv6 CIDR is no special case anywhere on the way)."""
    cidrs = ["10.20.0.0/16", "fd00:20::/64"]
    egress = {"databaseCIDRs": cidrs, "redisCIDRs": cidrs, "identityProviderCIDRs": cidrs}
    objects = render(deep_merge(DUAL_STACK, {"networkPolicy": {"egress": egress}}))
    blocks: dict[str, list[str]] = {}
    for policy in (o for o in objects if o["kind"] == "NetworkPolicy"):
        for rule in policy["spec"].get("egress", []):
            found = [peer["ipBlock"]["cidr"] for peer in rule.get("to", []) if "ipBlock" in peer]
            if found:
                blocks.setdefault(policy["metadata"]["name"], []).append(",".join(found))
    gateway = next(v for k, v in blocks.items() if k.endswith("-gateway"))
    assert ",".join(cidrs) in gateway, blocks
    assert all(entry == ",".join(cidrs) for entries in blocks.values() for entry in entries), blocks
