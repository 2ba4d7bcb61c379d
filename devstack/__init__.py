"""The local platform: what ``make dev`` runs and what end-to-end tests start.

``Platform`` brings up Postgres and Redis (the ones named by ``DATABASE_URL`` / ``REDIS_URL``, or
embedded ones keeping their data under ``.local/``), generates the local secrets once, migrates
every schema, seeds the demo users and clients, builds the SPA and starts the five services on
their fixed ports, each as ``python -m <service>`` exactly as in a container.
"""

from .platform import SERVICES, Platform, ServiceSpec

__all__ = ["SERVICES", "Platform", "ServiceSpec"]
