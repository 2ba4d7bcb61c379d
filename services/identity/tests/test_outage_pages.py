"""The provider's answers while its database is unavailable: a person's pages (sign-in, consent,
logout, account) get an HTML page with 503 and ``Retry-After`` — they got the kit's JSON problem
document, shown as raw text mid-sign-in — and what programs call (token, userinfo) keeps the problem
document. In process, over a database never reached; the stack's own outage case (every route) is
tests/faults/test_fault_matrix.py."""

from __future__ import annotations

import httpx
from identity.app import build_app
from identity.browser import CSRF_COOKIE, SESSION_COOKIE
from identity.settings import IdentitySettings
from svckit.settings import load_settings

from testkit.fixtures import free_port


async def test_pages_answer_an_html_503_and_endpoints_a_problem(identity_env: dict[str, str]) -> None:
    away = f"postgresql://nobody@127.0.0.1:{free_port()}/nowhere"
    settings = load_settings(IdentitySettings, env={**identity_env, "DATABASE_URL": away})
    app = build_app(settings)  # no lifespan: the pool is never made, as before Postgres first answers
    cookies = {SESSION_COOKIE: "s" * 43, CSRF_COOKIE: "c" * 43}
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://provider", cookies=cookies
    ) as http:
        for method, path in (("GET", "/account/consents"), ("GET", "/oidc/logout"), ("GET", "/v2/logout")):
            page = await http.request(method, path)
            assert page.status_code == 503, (path, page.text)
            assert page.headers["content-type"].startswith("text/html"), (path, page.headers)
            assert page.headers["retry-after"]
            assert "default-src 'none'" in page.headers["content-security-policy"]
            assert "try again" in page.text
        for method, path in (("GET", "/userinfo"), ("POST", "/oauth/token")):
            reply = await http.request(
                method, path, headers={"Authorization": "Bearer x"}, data={"grant_type": "refresh_token"}
            )
            assert reply.status_code == 503, (path, reply.text)
            assert reply.headers["content-type"].startswith("application/problem+json"), path
            assert reply.headers["retry-after"]
