"""Bad input at every route of the running provider, generated (hypothesis) and hand-picked.

The gateway's API has its schemathesis run (tests/contracts/test_api_fuzz.py); the provider's own
endpoints are not in that document, so they are driven here over raw HTTP/1.1 (bytes on a socket:
invalid UTF-8, NUL, odd percent-encoding and duplicate parameters reach the provider exactly as sent).
Every answer must hold to the provider's contract (docs/CONTRACTS.md, "Identity provider: bad input"):

* answered, within a few seconds, never a 5xx;
* the token and revocation endpoints answer errors as RFC 6749 §5.2 JSON: ``error`` (and
  ``error_description``) in the RFC's character set, ``Cache-Control: no-store``, 400 (401 for a client
  that failed to authenticate, 429 throttled); the transport's own refusals before the route (408, 413,
  414, 415 of a coded body) keep their documented shapes;
* every HTML page carries the strict headers (CSP with ``default-src 'none'`` and ``frame-ancestors``,
  ``no-store``, ``nosniff``) and never holds a tag sent in the request (autoescaped);
* a redirect goes to one of the provider's own paths or to a registered redirect/logout URI, never to
  an address taken from the request.

Bounded for CI: a fixed seed (``derandomize``) and ``TSP_PROVIDER_FUZZ_EXAMPLES`` examples (default 1,000:
about 6 s); set it higher to explore (e.g. 20000, some minutes), and ``TSP_PROVIDER_FUZZ_RANDOM=1``
for a new seed each run.
"""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import quote, urlencode

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from testkit.oidc import BATCH_SECRET, DEMO_PASSWORD

pytestmark = pytest.mark.usefixtures("identity_service")

EXAMPLES = int(os.environ.get("TSP_PROVIDER_FUZZ_EXAMPLES", "1000"))
ANSWER_SECONDS = 5.0
#: a tag the pages must never hold as sent (every value here is escaped or refused)
MARK = "<x-fuzz-7>"
SPA = "http://localhost:8080/"  # the seeded clients' redirect and logout URIs are all under it
#: RFC 6749 §5.2's character set for ``error`` and ``error_description``
QUOTABLE = re.compile(r"[\x20\x21\x23-\x5b\x5d-\x7e]*")
PKCE = {"code_challenge": "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM", "code_challenge_method": "S256"}

GET_PATHS = (
    "/authorize",
    "/login",
    "/v2/logout",
    "/oidc/logout",
    "/userinfo",
    "/account/consents",
    "/.well-known/openid-configuration",
    "/.well-known/jwks.json",
)
POST_PATHS = (
    "/authorize",
    "/authorize/decision",
    "/login",
    "/oauth/token",
    "/oauth/revoke",
    "/userinfo",
    "/oidc/logout",
    "/v2/logout",
    "/account/consents/revoke",
)
OAUTH_JSON = ("/oauth/token", "/oauth/revoke")
#: answered before the route, by the kit's front or the HTTP layer, as problem documents
TRANSPORT = {408, 413, 414, 431}
NAMES = (
    "client_id",
    "redirect_uri",
    "response_type",
    "response_mode",
    "scope",
    "state",
    "nonce",
    "prompt",
    "max_age",
    "login_hint",
    "login_after",
    "code_challenge",
    "code_challenge_method",
    "dpop_jkt",
    "request",
    "request_uri",
    "grant_type",
    "code",
    "code_verifier",
    "refresh_token",
    "client_secret",
    "token",
    "token_type_hint",
    "audience",
    "resource",
    "return_to",
    "returnTo",
    "username",
    "password",
    "csrf_token",
    "decision",
    "id_token_hint",
    "post_logout_redirect_uri",
    "logout_hint",
    "ui_locales",
)
CLIENTS = ("timesheets-spa", "partner-spa", "timesheets-batch", "nobody")
ODD_VALUES = (
    "%",
    "%g1",
    "%%",
    "%2",
    "%ff",
    "%fe%ff",
    "%00",
    "%c0%af",
    "%ed%a0%80",
    "%0d%0aX-Fuzz:%201",
    "%E2%80%AE",
    quote(MARK),
    quote('"><script>x</script>'),
    "+",
    "a%20b+c",
)
NASTY_HEADERS: tuple[tuple[tuple[str, bytes], ...], ...] = (
    (),
    (("Authorization", b"Basic !!!"),),
    (("Authorization", b"Basic /w=="),),  # base64 of a byte that is not UTF-8
    (("Authorization", b"Basic " + b"QQ" * 2000),),
    (("Authorization", b"Basic \xff\xfe"),),
    (("Authorization", b"Bearer"),),
    (("Authorization", b"DPoP a.b.c"), ("DPoP", b"a.b.c")),
    (("DPoP", b"garbage"),),
    (("DPoP", b"eyJhbGciOiJub25lIn0.e30."),),
    (("DPoP", b"x"), ("DPoP", b"y")),
    (("Cookie", b"tsp_idp_session=" + b"x" * 3000 + b"; tsp_idp_csrf=\xff"),),
    (("Cookie", b'tsp_idp_csrf="a;b; ;;=;='),),
    (("Content-Encoding", b"gzip"),),
    (("X-Forwarded-For", b"garbage, ::::, 999.1.1.1"),),
    (("Origin", b"null"),),
)


@dataclass
class Answer:
    status: int
    headers: dict[str, list[str]] = field(default_factory=dict)
    body: bytes = b""

    def header(self, name: str) -> str:
        return (self.headers.get(name.lower()) or [""])[0]


def send(
    port: int, method: str, target: bytes, headers: tuple[tuple[str, bytes], ...] = (), body: bytes = b""
) -> Answer:
    """One request on its own connection, bytes as given; the whole answer within ANSWER_SECONDS."""
    lines = [method.encode() + b" " + target + b" HTTP/1.1", f"Host: localhost:{port}".encode()]
    lines += [name.encode() + b": " + value for name, value in headers]
    lines += [b"Connection: close", f"Content-Length: {len(body)}".encode()]
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=ANSWER_SECONDS) as sock:
        sock.sendall(b"\r\n".join(lines) + b"\r\n\r\n" + body)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
            assert time.monotonic() - started < ANSWER_SECONDS, f"{method} {target[:80]!r}: too slow"
    head, _, rest = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    answer = Answer(int(status_line.split()[1]), body=rest)
    for line in header_lines:
        name, _, value = line.partition(":")
        answer.headers.setdefault(name.strip().lower(), []).append(value.strip())
    return answer


def check(label: str, path: str, answer: Answer) -> None:
    """The contract every answer holds to, whatever was sent."""
    assert answer.status < 500, f"{label}: {answer.status} {answer.body[:300]!r}"
    content_type = answer.header("content-type")
    if path in OAUTH_JSON and answer.status >= 400 and answer.status not in TRANSPORT:
        assert answer.status in (400, 401, 415, 429), f"{label}: {answer.status}"
        assert content_type.startswith("application/json"), f"{label}: {content_type} {answer.body[:200]!r}"
        assert answer.header("cache-control") == "no-store", label
        document = json.loads(answer.body)
        assert isinstance(document.get("error"), str), f"{label}: {document}"
        assert document["error"], f"{label}: {document}"
        assert QUOTABLE.fullmatch(document["error"]), f"{label}: {document}"
        assert QUOTABLE.fullmatch(document.get("error_description", "")), f"{label}: {document}"
    if content_type.startswith("text/html"):
        csp = answer.header("content-security-policy")
        assert "default-src 'none'" in csp, f"{label}: {csp!r}"
        assert "frame-ancestors" in csp, f"{label}: {csp!r}"
        assert answer.header("cache-control") == "no-store", label
        assert answer.header("x-content-type-options") == "nosniff", label
        page = answer.body.decode("utf-8", "replace").lower()
        assert MARK not in page, f"{label}: a tag of the request on the page"
        assert "<script>x" not in page, f"{label}: a tag of the request on the page"
    location = answer.header("location")
    if location:
        own = location.startswith("/") and not location.startswith(("//", "/\\"))
        assert own or location.startswith(SPA), f"{label}: redirected to {location[:200]!r}"
    assert "x-fuzz" not in answer.headers, f"{label}: a header injected"


@pytest.fixture(scope="module")
def port(base_url: str) -> int:
    return int(base_url.rsplit(":", 1)[1])


def _cookies(answer: Answer) -> dict[str, str]:
    pairs = (value.split(";", 1)[0].partition("=") for value in answer.headers.get("set-cookie", []))
    return {name: value for name, _, value in pairs}


def _hidden(answer: Answer, name: str) -> str:
    found = re.search(rf'name="{name}" value="([^"]*)"'.encode(), answer.body)
    assert found is not None, answer.body[:500]
    return found.group(1).decode()


@pytest.fixture(scope="module")
def signed_in(port: int) -> bytes:
    """The cookies of a signed-in browser (carol: no other test here signs her in or out)."""
    form = send(port, "GET", b"/login")
    cookies = _cookies(form)
    body = urlencode(
        {"csrf_token": _hidden(form, "csrf_token"), "username": "carol", "password": DEMO_PASSWORD}
    ).encode()
    headers = (
        ("Content-Type", b"application/x-www-form-urlencoded"),
        ("Cookie", f"tsp_idp_csrf={cookies['tsp_idp_csrf']}".encode()),
    )
    answer = send(port, "POST", b"/login", headers, body)
    assert answer.status == 303, answer.body
    cookies.update(_cookies(answer))
    return "; ".join(f"{name}={value}" for name, value in cookies.items()).encode()


# --- generated ------------------------------------------------------------------------------------

_texts = st.text(alphabet=st.characters(codec="utf-8"), max_size=40) | st.sampled_from(
    (MARK, '"><script>x</script>', "\x00", "\u2028", "\ufeff", " ", "")
)
_values = st.one_of(
    _texts.map(lambda text: quote(text, safe="")),
    st.sampled_from(ODD_VALUES),
    st.sampled_from(CLIENTS),
    st.sampled_from(
        (quote(SPA + "callback", safe=""), "http://evil.example/", "//evil.example", "/authorize")
    ),
    st.sampled_from(
        ("code", "token", "id_token token", "openid profile", "query", "form_post", "web_message")
    ),
    st.integers(-(10**30), 10**30).map(str),
    st.binary(max_size=24).map(lambda raw: quote(raw, safe="")),
)
_names = st.sampled_from(NAMES) | _texts.map(lambda text: quote(text, safe=""))
_pairs = st.lists(st.tuples(_names, _values), max_size=14)


def _query(pairs: list[tuple[str, str]]) -> bytes:
    return "&".join(f"{name}={value}" for name, value in pairs).encode()


def _body(kind: str, pairs: list[tuple[str, str]]) -> tuple[bytes | None, bytes]:
    """(the Content-Type, the body) of a POST of ``pairs`` as ``kind``."""
    if kind == "form":
        return b"application/x-www-form-urlencoded", _query(pairs)
    if kind == "json":
        return b"application/json", json.dumps(dict(pairs)).encode()
    if kind == "multipart":
        parts = b"".join(
            b'--B\r\nContent-Disposition: form-data; name="'
            + name.encode()
            + b'"\r\n\r\n'
            + value.encode()
            + b"\r\n"
            for name, value in pairs
        )
        return b"multipart/form-data; boundary=B", parts + b"--B--\r\n"
    if kind == "garbage-json":
        return b"application/json", b'{"a": ' + _query(pairs)
    return (None if kind == "none" else kind.encode()), _query(pairs)


_requests = st.tuples(
    st.sampled_from(("GET", "POST")),
    st.integers(0, len(POST_PATHS) - 1),
    _pairs,
    st.sampled_from(("form", "json", "multipart", "garbage-json", "none", "text/plain", "application/xml")),
    st.sampled_from(NASTY_HEADERS),
    st.booleans(),  # a valid authorization request (or an authenticated client) underneath
    st.booleans(),  # signed in
)


@settings(
    max_examples=EXAMPLES,
    derandomize=os.environ.get("TSP_PROVIDER_FUZZ_RANDOM") is None,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(request=_requests)
def test_generated_requests_hold_to_the_contract(
    port: int,
    signed_in: bytes,
    request: tuple[str, int, list[tuple[str, str]], str, tuple[tuple[str, bytes], ...], bool, bool],
) -> None:
    method, index, pairs, kind, headers, valid_base, session = request
    path = (GET_PATHS if method == "GET" else POST_PATHS)[
        index % (len(GET_PATHS) if method == "GET" else len(POST_PATHS))
    ]
    if valid_base and path == "/authorize":
        base = {
            "client_id": "timesheets-spa",
            "redirect_uri": SPA + "callback",
            "response_type": "code",
            **PKCE,
        }
        pairs = [*((name, quote(value, safe="")) for name, value in base.items()), *pairs]
    if valid_base and path in OAUTH_JSON:  # an authenticated client underneath
        basic = base64.b64encode(f"timesheets-batch:{BATCH_SECRET}".encode())
        headers = (("Authorization", b"Basic " + basic), *headers)
        pairs = [("grant_type", "client_credentials"), ("token", "t"), *pairs]
    if session and path not in ("/v2/logout", "/oidc/logout", "/login"):  # carol stays signed in
        headers = (*headers, ("Cookie", signed_in))
    if method == "GET":
        target = path.encode() + (b"?" + _query(pairs) if pairs else b"")
        if len(target) > 8000 or any(byte < 0x21 or byte > 0x7E for byte in target):
            target = path.encode() + b"?" + quote(_query(pairs), safe="=&%").encode()[:8000]
        answer = send(port, method, target, headers)
    else:
        content_type, body = _body(kind, pairs)
        if content_type is not None:
            headers = (("Content-Type", content_type), *headers)
        answer = send(port, method, path.encode(), headers, body)
    check(f"{method} {path} {pairs!r:.300} {headers!r:.120}", path, answer)


# --- hand-picked ----------------------------------------------------------------------------------


def _authorize_query(**extra: str) -> str:
    params = {
        "client_id": "timesheets-spa",
        "redirect_uri": SPA + "callback",
        "response_type": "code",
        "scope": "openid",
        **PKCE,
    }
    return urlencode({**params, **extra})


def _hand_picked(signed_in: bytes) -> Iterator[tuple[str, str, bytes, tuple[tuple[str, bytes], ...], bytes]]:
    """(method, path, target, headers, body) of inputs chosen for what they have broken elsewhere."""
    form = (("Content-Type", b"application/x-www-form-urlencoded"),)
    session = (("Cookie", signed_in),)
    for odd in ODD_VALUES:
        for name in (
            "state",
            "scope",
            "nonce",
            "redirect_uri",
            "client_id",
            "max_age",
            "login_after",
            "dpop_jkt",
        ):
            yield "GET", "/authorize", f"/authorize?{_authorize_query()}&{name}={odd}".encode(), (), b""
        yield (
            "GET",
            "/login",
            f"/login?return_to=/authorize%3Fclient_id%3D{odd}%26login_hint%3D{odd}".encode(),
            (),
            b"",
        )
        yield "GET", "/v2/logout", f"/v2/logout?client_id={odd}&returnTo={odd}".encode(), (), b""
        yield (
            "GET",
            "/oidc/logout",
            f"/oidc/logout?post_logout_redirect_uri={odd}&state={odd}".encode(),
            session,
            b"",
        )
        for path in OAUTH_JSON:
            yield "POST", path, path.encode(), form, f"grant_type={odd}&token={odd}&client_id={odd}".encode()
    for mode in ("query", "fragment", "form_post", "web_message"):
        for state in (MARK, '"});alert(1);//', "</script><script>x</script>", "\u2028"):
            query = _authorize_query(response_mode=mode, state=state)
            yield "GET", "/authorize", f"/authorize?{query}".encode(), session, b""
    repeated = "&".join(["scope=openid"] * 600)
    yield "GET", "/authorize", f"/authorize?{_authorize_query()}&{repeated}".encode(), (), b""
    yield "POST", "/authorize", b"/authorize", form, f"{_authorize_query()}&{repeated}".encode()
    yield "POST", "/oauth/token", b"/oauth/token", form, ("x=1&" * 1200).encode()
    yield "POST", "/oauth/token", b"/oauth/token", form, b"scope=" + b"+".join([b"openid"] * 9000)
    yield (
        "POST",
        "/oauth/revoke",
        b"/oauth/revoke",
        form,
        b"token=t&client_id=timesheets-spa&token_type_hint=x",
    )
    yield "GET", "/authorize", b"/authorize?state=" + b"a" * 20000, (), b""  # past the request line's limit
    yield "POST", "/oauth/token", b"/oauth/token", form, b"a=" + b"b" * 70000  # past the body limit
    for body in (b"[" * 50000, b'{"a": 1e999999}', b'{"a":1,"a":2}', b'{"a": "\\ud800"}', b"\xff"):
        yield "POST", "/oauth/token", b"/oauth/token", (("Content-Type", b"application/json"),), body
    for headers in NASTY_HEADERS:
        for path in ("/oauth/token", "/oauth/revoke", "/userinfo"):
            yield "POST", path, path.encode(), (*form, *headers), b"grant_type=client_credentials&token=t"
        for path in ("/authorize", "/userinfo", "/account/consents", "/oidc/logout"):
            yield "GET", path, path.encode(), headers, b""
    for path in ("/authorize/", "/login/", "/oauth/token/", "//authorize", "/authorize;x", "/%2e%2e/login"):
        yield "GET", path, path.encode(), (), b""


def test_hand_picked_requests_hold_to_the_contract(port: int, signed_in: bytes) -> None:
    count = 0
    for method, path, target, headers, body in _hand_picked(signed_in):
        check(f"{method} {target[:200]!r} {headers!r:.120}", path, send(port, method, target, headers, body))
        count += 1
    assert count > 300
