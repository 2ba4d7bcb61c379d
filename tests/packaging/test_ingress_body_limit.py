"""The gateway's Ingress lets through every body the gateway and the timesheets service take.

The gateway and the timesheets service take bodies up to ``MAX_BODY_BYTES`` (16 MiB by default,
``svckit.contracts.timesheets.MAX_UPLOAD_BYTES``: a full 1,000-row upload at its longest, ~9.5 MB as
UTF-8, ~14.2 MB ``\\u``-escaped, docs/CONTRACTS.md). An ingress controller's own body limit below
that refuses such an upload with its own 413 (an HTML page, not a problem document), before the
gateway counts or audits anything: the upload documented as taken end to end is refused in that
deployment.
"""

from __future__ import annotations

import re

import pytest
from gateway.settings import GatewaySettings

from tests.packaging.support import SCENARIOS, Obj, component, rendered_scenario
from tests.packaging.test_policies import app_deployments, env_of, main_container

NGINX_BODY_SIZE = "nginx.ingress.kubernetes.io/proxy-body-size"
UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def nginx_bytes(size: str) -> int | None:
    """nginx's ``client_max_body_size`` in bytes (``0``: no limit, None)."""
    match = re.fullmatch(r"\s*([0-9]+)\s*([kKmMgG]?)\s*", size)
    assert match is not None, size
    number = int(match.group(1)) * UNITS[match.group(2).lower()]
    return None if number == 0 else number


def gateway_max_body(objects: list[Obj]) -> int:
    (gateway,) = [d for d in app_deployments(objects) if component(d) == "gateway"]
    entry = env_of(main_container(gateway)).get("MAX_BODY_BYTES")
    if entry is not None and "value" in entry:
        return int(entry["value"])
    return int(GatewaySettings.model_fields["max_body_bytes"].default)


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_the_gateway_ingress_takes_every_body_the_gateway_takes(scenario: str) -> None:
    objects = rendered_scenario(scenario)
    ingresses = [o for o in objects if o["kind"] == "Ingress" and component(o) == "gateway"]
    limit = gateway_max_body(objects)
    for ingress in ingresses:
        size = ingress["metadata"].get("annotations", {}).get(NGINX_BODY_SIZE)
        if size is None:
            continue  # the controller's default; the chart sets none
        allowed = nginx_bytes(str(size))
        assert allowed is None or allowed >= limit, (
            f"{scenario}: the gateway's Ingress refuses bodies over {size} ({allowed} bytes), "
            f"the gateway takes up to {limit} bytes"
        )
