"""Open files at start: is ``RLIMIT_NOFILE`` high enough for ``MAX_CONNECTIONS_PER_WORKER``?

Every connection a worker holds is a file descriptor, and so is everything else it opens: its
database pool, its Redis clients, its HTTP client to peers (and the gateway's upstream pools), its
listeners, its event loop, log and metric files. Nothing checked the process's limit against the
connection cap: with the default cap of 2048 and a soft limit of 1024 (the usual default on a Linux
login, and some container runtimes' soft limit), a worker would run out of descriptors long before its
cap — ``accept()`` failing with ``EMFILE`` (asyncio logs it and pauses accepting for a second, clients
wait unanswered), and so would a new database or Redis connection — while the 503 the cap promises
never came.

At start, before the listeners are bound (:func:`check_open_files`, called by ``svckit.cli``):

1. what a worker may need is the cap (times the descriptors one connection may hold: 2 for the
   gateway, whose responses stream SPA files) plus :func:`files_besides_connections` (an upper bound
   from the settings: the pools at their maximum, plus :data:`BASE_FILES`);
2. a soft limit below that is raised toward the hard limit (``setrlimit``, which needs no privilege:
   as Go's runtime and nginx's ``worker_rlimit_nofile`` do); the workers inherit it;
3. if the hard limit is still too low, which way it goes depends on who chose the cap:

   * ``MAX_CONNECTIONS_PER_WORKER`` **set** by the operator: the service refuses to start, with one
     line naming the variable, what it needs and the hard limit (exit code 2, as for any setting the
     service cannot honour). The operator asked for that many; quietly serving fewer would turn the
     503s of ``TimesheetsConnectionLimitReached`` into a puzzle whose runbook remedy (raise the
     setting) does nothing. A pod that will not start fails its rollout, where it is seen, while the
     previous pods keep serving;
   * **unset** (the kit's default, which is a guess, not the operator's promise): the cap is lowered to
     what the hard limit leaves, with one warning line giving both numbers, and the service starts —
     so ``make dev`` works on a machine with a low hard limit, and the 503s come at the lowered cap
     instead of ``EMFILE`` errors. Should the hard limit leave no connection at all, it refuses as
     above.
"""

from __future__ import annotations

import logging
import resource
from dataclasses import dataclass

from .http import CONNECTIONS_PER_SESSION
from .redisguard import MAX_CONNECTIONS as REDIS_GUARD_CONNECTIONS
from .replay import REDIS_CONNECTIONS as REPLAY_CONNECTIONS
from .settings import DatabaseSettings, RedisSettings, ServiceSettings

log = logging.getLogger("svckit.fdlimit")

#: descriptors of a worker besides its connections and pools: stdin/stdout/stderr, the public and
#: metrics listeners, the event loop's epoll and wake-up pipe, signal and child-watcher fds, metric
#: files (the gateway's multiprocess mode), TLS and CA files, ``/dev/urandom``, a migration file read
BASE_FILES = 64


def files_besides_connections(settings: ServiceSettings, extra: int = 0) -> int:
    """Descriptors one worker may hold besides its client connections, at most: :data:`BASE_FILES`,
    the peers' HTTP client, the database pool at ``DB_POOL_MAX``, the Redis clients (the service's
    guard, the replay memory's and its wire) and ``extra`` (what the service adds)."""
    files = BASE_FILES + CONNECTIONS_PER_SESSION + extra
    if isinstance(settings, DatabaseSettings):
        files += settings.db_pool_max
    if isinstance(settings, RedisSettings):
        files += REDIS_GUARD_CONNECTIONS + REPLAY_CONNECTIONS + 1
    return files


@dataclass(frozen=True)
class OpenFiles:
    """What :func:`check_open_files` decided: the cap to serve with, or why the service cannot start."""

    max_connections: int
    #: the one line to print and exit 2 with; ``None``: start with :attr:`max_connections`
    refusal: str | None = None


def _limits() -> tuple[int, int]:
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def check_open_files(settings: ServiceSettings, extra: int = 0, per_connection: int = 1) -> OpenFiles:
    """Raise the soft ``RLIMIT_NOFILE`` as far as the workers need (and the hard limit allows), then
    decide the cap they serve with (see the module docstring). ``per_connection``: the descriptors one
    client connection may hold, itself included (the gateway's 2: a connection streaming an SPA file
    holds that file open for as long as its client takes to read it)."""
    cap = settings.max_connections_per_worker
    besides = files_besides_connections(settings, extra)
    needed = cap * per_connection + besides
    soft, hard = _limits()
    ceiling = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if soft != resource.RLIM_INFINITY and soft < ceiling:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (ceiling, hard))
        except (ValueError, OSError) as exc:  # a platform ceiling below the hard limit (macOS's OPEN_MAX)
            log.warning("could not raise the open-file limit", extra={"to": ceiling, "error": str(exc)})
        else:
            log.info("raised the open-file limit", extra={"soft": ceiling, "was": soft, "hard": hard})
        soft = _limits()[0]
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return OpenFiles(cap)
    fits = (soft - besides) // per_connection
    explicit = "max_connections_per_worker" in settings.model_fields_set
    each = f", {per_connection} per connection" if per_connection > 1 else ""
    if explicit or fits < 1:
        return OpenFiles(
            cap,
            refusal=(
                f"invalid configuration: MAX_CONNECTIONS_PER_WORKER={cap} needs {needed} open files per "
                f"worker ({besides} besides its connections{each}), but the open-file limit (RLIMIT_NOFILE) "
                f"is {soft}: raise the limit (ulimit -n, the container runtime's nofile) or lower "
                f"MAX_CONNECTIONS_PER_WORKER to {max(fits, 0)} or less"
            ),
        )
    log.warning(
        "the open-file limit is too low for the default connection cap: serving fewer connections per "
        "worker (set MAX_CONNECTIONS_PER_WORKER, or raise the limit)",
        extra={
            "max_connections": fits,
            "default": cap,
            "open_file_limit": soft,
            "besides_connections": besides,
        },
    )
    return OpenFiles(fits)


__all__ = ["BASE_FILES", "OpenFiles", "check_open_files", "files_besides_connections"]
