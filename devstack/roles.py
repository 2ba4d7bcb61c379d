"""The services' runtime database roles in a local run (what the chart's migration Job does too).

``DATABASE_URL`` — given, or the embedded server's — is the migration role: it owns every schema.
``python -m <service> migrate`` runs with it and prepares ``<DB_ROLE_PREFIX><service>`` (default
prefix ``tsp_``) with the password ``<SERVICE>_DB_PASSWORD`` from ``.local/secrets.env``; each
service then runs with a ``DATABASE_URL`` naming its own role (:mod:`svckit.roles`). Roles are global
to a PostgreSQL cluster: give every ``make dev`` sharing one server its own ``DB_ROLE_PREFIX``.
``DB_MANAGE_ROLES=false`` leaves creating the roles (and their passwords, given as
``<SERVICE>_DB_PASSWORD``) to whoever runs the server, as on a managed database.

A service's environment holds its own role's password only: never the owner's URL, never another
service's password; the audit service alone sees its checkpoint signing keys; and a service sees
the identity keys of the pairs it is an end of only (svckit.identity.PAIRS), a migration none.

Redis likewise: with the embedded server, ``make dev`` creates one ACL user per component
(svckit.redisacl: its commands, its keys under ``REDIS_KEY_PREFIX``), named after the component, with
the password ``<COMPONENT>_REDIS_PASSWORD`` from ``.local/secrets.env``, and each service gets a
``REDIS_URL`` naming its own user (``svckit.redisacl.user_url``) and no Redis password at all. The
``admin`` user (``ADMIN_REDIS_PASSWORD``) is devstack's and the developer's; without a password the
server answers only ``PING`` (devstack.backing.embedded_redis_acl). A ``REDIS_URL`` given in the
environment is used as it is, by every service (its users are yours).
"""

from __future__ import annotations

from collections.abc import Mapping

from svckit.identity import PAIRS, pair_variable
from svckit.roles import role_url

DEFAULT_PREFIX = "tsp_"
#: secrets that belong to one service: the others never see them (tests/docs/test_devstack_roles.py
#: finds every variable that only one service's settings read)
OWN_SECRETS = {
    "AUDIT_CHECKPOINT_KEYS": "audit",
    "GATEWAY_CACHE_SECRET": "gateway",
    "DPOP_NONCE_SECRET": "gateway",
    "IDENTITY_KEY_ENCRYPTION_KEY": "identity",
    "IDENTITY_SESSION_SECRET": "identity",
    "BATCH_CLIENT_SECRET": "identity",
    "DEMO_PASSWORD": "identity",
}
PASSWORD_SUFFIX = "_DB_PASSWORD"  # noqa: S105 - a variable name, not a password
REDIS_PASSWORD_SUFFIX = "_REDIS_PASSWORD"  # noqa: S105 - a variable name, not a password


IDENTITY_KEY_PREFIX = "IDENTITY_KEYS"  # the pairs' variables, and the retired shared IDENTITY_KEYS


def identity_key_visible(name: str, service: str | None) -> bool:
    """Whether ``service`` (``None``: a migration or seed step) may see variable ``name``."""
    if not name.startswith(IDENTITY_KEY_PREFIX):
        return True
    return service is not None and any(
        name == pair_variable(sender, receiver) and service in (sender, receiver)
        for sender, receiver in PAIRS
    )


def role_name(env: Mapping[str, str], service: str) -> str:
    return env.get("DB_ROLE_PREFIX", DEFAULT_PREFIX) + service


def password_variable(service: str) -> str:
    return service.upper() + PASSWORD_SUFFIX


def redis_password_variable(component: str) -> str:
    return component.upper() + REDIS_PASSWORD_SUFFIX


def migrate_env(env: Mapping[str, str], service: str) -> dict[str, str]:
    """What ``python -m <service> migrate`` adds to the owner's environment."""
    return {
        "DB_RUNTIME_ROLE": role_name(env, service),
        "DB_RUNTIME_PASSWORD": env.get(password_variable(service), ""),
    }


def service_database(env: Mapping[str, str], service: str, schema: str | None) -> dict[str, str]:
    """``env`` as ``service`` may see it: its own role's ``DATABASE_URL`` (none without a schema) and
    no database password at all."""
    visible = {
        name: value
        for name, value in env.items()
        if not name.endswith((PASSWORD_SUFFIX, REDIS_PASSWORD_SUFFIX))
        and name not in ("DATABASE_URL", "DB_RUNTIME_PASSWORD")
        and OWN_SECRETS.get(name, service) == service
        and identity_key_visible(name, service)
    }
    if schema is not None:
        visible["DATABASE_URL"] = role_url(
            env["DATABASE_URL"], role_name(env, service), env.get(password_variable(service)) or None
        )
    return visible
