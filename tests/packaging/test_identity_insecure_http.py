"""A plain-http issuer of the bundled identity provider off the loopback interface is a choice made in
the values (``identity.allowInsecureHttp``), refused at render time otherwise.

On such an issuer Authlib refuses every authorization request (each sign-in answered 500 before the
service refused to start with it); chart-testing's cluster, with no TLS and the in-cluster issuer
``http://timesheets-identity:9000/``, is where it is wanted (tests/packaging/test_pods_as_rendered.py
signs in on such a release)."""

from __future__ import annotations

import pytest

from tests.packaging.support import MINIMAL, Obj, deep_merge, pod_spec, render

NAME = "IDENTITY_ALLOW_INSECURE_HTTP"
IN_CLUSTER = deep_merge(
    MINIMAL, {"identity": {"enabled": True}, "oidc": {"issuers": ["http://timesheets-identity:9000/"]}}
)


def identity_containers(objects: list[Obj]) -> list[dict[str, str]]:
    """The plain env of every container running the identity image (its Deployment, Job containers)."""
    out = []
    for obj in objects:
        spec = pod_spec(obj)
        for container in [*(spec or {}).get("initContainers", []), *(spec or {}).get("containers", [])]:
            if "timesheets-identity" in container.get("image", ""):
                out.append({e["name"]: str(e["value"]) for e in container.get("env", []) if "value" in e})
    return out


def test_an_in_cluster_http_issuer_without_the_opt_in_is_refused_at_render() -> None:
    with pytest.raises(Exception, match=r"identity\.allowInsecureHttp"):
        render(IN_CLUSTER)


def test_with_the_opt_in_every_identity_container_gets_it() -> None:
    containers = identity_containers(
        render(deep_merge(IN_CLUSTER, {"identity": {"allowInsecureHttp": True}}))
    )
    assert len(containers) >= 2  # the Deployment's and the migration Job's
    assert {c[NAME] for c in containers} == {"true"}


@pytest.mark.parametrize(
    "issuer",
    ["https://id.abc.example/", "http://localhost:9000/", "http://[::1]:9000/", "https://[fd00::7]/"],
)
def test_an_encrypted_or_loopback_issuer_needs_no_opt_in(issuer: str) -> None:
    containers = identity_containers(
        render(deep_merge(MINIMAL, {"identity": {"enabled": True}, "oidc": {"issuers": [issuer]}}))
    )
    assert containers
    assert {c[NAME] for c in containers} == {"false"}


def test_an_ipv6_http_issuer_off_the_loopback_needs_the_opt_in() -> None:
    values = deep_merge(
        MINIMAL, {"identity": {"enabled": True}, "oidc": {"issuers": ["http://[fd00::7]:9000/"]}}
    )
    with pytest.raises(Exception, match=r"identity\.allowInsecureHttp"):
        render(values)
