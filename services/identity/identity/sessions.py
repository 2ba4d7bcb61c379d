"""Sign-in sessions at the provider: the browser's session cookie to the signed-in user."""

from __future__ import annotations

from starlette.requests import Request
from svckit.db import Database

from . import store
from .browser import SESSION_COOKIE
from .models import SignedInUser

MAX_COOKIE_LENGTH = 100


class Sessions:
    def __init__(self, database: Database) -> None:
        self.database = database

    @staticmethod
    def cookie(request: Request) -> str | None:
        value = request.cookies.get(SESSION_COOKIE)
        return value if value and len(value) <= MAX_COOKIE_LENGTH else None

    async def current(self, request: Request) -> SignedInUser | None:
        """The user signed in with this browser, if the session is valid and the user enabled."""
        session_id = self.cookie(request)
        if session_id is None:
            return None
        found = await store.get_session(self.database.queries, session_id)
        if found is None:
            return None
        user, auth_time = found
        return SignedInUser(
            user=user,
            auth_time=int(auth_time.timestamp()),
            session_hash=store.digest(session_id),
            signed_in_at=auth_time.timestamp(),
        )
