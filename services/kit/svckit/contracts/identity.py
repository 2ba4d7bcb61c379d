"""Who is calling, and how a party appears in the API's documents.

:class:`svckit.identity.Identity` (a frozen dataclass) is the one definition of a caller: the gateway
builds it from a verified token, services read it from the signed ``X-Identity-*`` headers. It is
re-exported here so that every contract is importable from :mod:`svckit.contracts`. The signing scheme
itself stays in :mod:`svckit.identity` and is internal: the client-facing OpenAPI document never
describes it.

:class:`Person` is the public projection of an identity (entry owners, approvers).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from ..identity import KINDS, SERVICE_ISSUER, Identity, Kind


class Person(BaseModel):
    """A user as entries and decisions show them: subjects are unique within their issuer only."""

    model_config = ConfigDict(frozen=True)

    issuer: str = Field(description="The issuer of the person's token (an OIDC issuer URL).")
    subject: str = Field(description="The token's sub, unique within the issuer.")
    name: str | None = Field(description="A display name when the token carried one.")

    @classmethod
    def of(cls, identity: Identity) -> Person:
        return cls(issuer=identity.issuer, subject=identity.subject, name=identity.name or None)


__all__ = ["KINDS", "SERVICE_ISSUER", "Identity", "Kind", "Person"]
