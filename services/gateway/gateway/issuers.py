"""Per-issuer verification settings: which issuers are trusted and how each one is read.

``OIDC_ISSUER`` lists the trusted issuers. ``GATEWAY_ISSUERS_FILE`` (YAML, optional) may give any of
them its own settings::

    issuers:
      "https://tenant.auth0.com/":
        jwks_uri: https://tenant.auth0.com/.well-known/jwks.json   # skip discovery
        scope_claims: [scope, permissions]                         # which claims grant scopes
        name_claims: [name, email]
        leeway_seconds: 10
        algorithms: [RS256]
        dpop: required            # DPoP-bound tokens only (default: DPOP_POLICY, "allowed")

An entry for an issuer that is not in ``OIDC_ISSUER`` is an error: trust is granted in one place.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from .settings import GatewaySettings

DEFAULT_SCOPE_CLAIMS = ("scope", "scp", "permissions")
DEFAULT_NAME_CLAIMS = ("name", "email", "preferred_username")
KNOWN_SCOPE_CLAIMS = frozenset(DEFAULT_SCOPE_CLAIMS)


class IssuerConfigError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class IssuerConfig:
    issuer: str
    jwks_uri: str | None
    scope_claims: tuple[str, ...]
    name_claims: tuple[str, ...]
    leeway_seconds: int
    algorithms: frozenset[str]
    dpop_required: bool = False  # bearer tokens of this issuer are refused (DPoP-bound ones only)

    @property
    def discovery_url(self) -> str:
        base = self.issuer if self.issuer.endswith("/") else self.issuer + "/"
        return base + ".well-known/openid-configuration"


def _string_list(value: object, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
        raise IssuerConfigError(f"{where} must be a list of strings")
    return tuple(value)


def load_issuers(settings: GatewaySettings) -> dict[str, IssuerConfig]:
    overrides: dict[str, dict[str, object]] = {}
    if settings.gateway_issuers_file is not None:
        path: Path = settings.gateway_issuers_file
        try:
            document = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise IssuerConfigError(f"cannot read GATEWAY_ISSUERS_FILE {path}: {exc}") from None
        entries = document.get("issuers", {}) if isinstance(document, dict) else None
        if not isinstance(entries, dict):
            raise IssuerConfigError("GATEWAY_ISSUERS_FILE needs an 'issuers' mapping")
        for issuer, entry in entries.items():
            if issuer not in settings.oidc_issuer:
                raise IssuerConfigError(
                    f"issuer {issuer!r} in GATEWAY_ISSUERS_FILE is not listed in OIDC_ISSUER"
                )
            if not isinstance(entry, dict):
                raise IssuerConfigError(f"settings of issuer {issuer!r} must be a mapping")
            overrides[issuer] = entry
    issuers: dict[str, IssuerConfig] = {}
    for issuer in settings.oidc_issuer:
        entry = overrides.get(issuer, {})
        where = f"issuer {issuer!r}"
        jwks_uri = entry.get("jwks_uri")
        if jwks_uri is not None and (not isinstance(jwks_uri, str) or not jwks_uri.startswith("http")):
            raise IssuerConfigError(f"{where}: jwks_uri must be an http(s) URL")
        scope_claims = _string_list(
            entry.get("scope_claims", list(DEFAULT_SCOPE_CLAIMS)), f"{where}: scope_claims"
        )
        unknown = set(scope_claims) - KNOWN_SCOPE_CLAIMS
        if unknown:
            raise IssuerConfigError(f"{where}: unknown scope claims {sorted(unknown)}")
        name_claims = _string_list(
            entry.get("name_claims", list(DEFAULT_NAME_CLAIMS)), f"{where}: name_claims"
        )
        leeway = entry.get("leeway_seconds", settings.jwt_leeway_seconds)
        if not isinstance(leeway, int) or isinstance(leeway, bool) or not 0 <= leeway <= 300:
            raise IssuerConfigError(f"{where}: leeway_seconds must be an integer 0..300")
        algorithms = _string_list(
            entry.get("algorithms", list(settings.jwt_algorithms)), f"{where}: algorithms"
        )
        outside = set(algorithms) - set(settings.jwt_algorithms)
        if outside:
            raise IssuerConfigError(f"{where}: algorithms {sorted(outside)} are not in JWT_ALGORITHMS")
        dpop = entry.get("dpop", settings.dpop_policy)
        if dpop not in ("allowed", "required"):
            raise IssuerConfigError(f"{where}: dpop must be 'allowed' or 'required'")
        issuers[issuer] = IssuerConfig(
            issuer=issuer,
            jwks_uri=jwks_uri,
            scope_claims=scope_claims,
            name_claims=name_claims,
            leeway_seconds=leeway,
            algorithms=frozenset(algorithms),
            dpop_required=dpop == "required",
        )
    return issuers
