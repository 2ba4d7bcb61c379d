"""Configuration and administration: required secrets, the CLI, client-authentication throttling.

The command line's answers are asserted on what ``python -m identity ...`` gives: exit code, stdout,
stderr. Each wiring of it (a settings refusal at start, the seed, a generated secret on stdout, a
password on stdin, a refused name, a database away) keeps a real process; the corpus of cases of
each (every refused character, every command without its database) goes through one interpreter
(:class:`testkit.clihost.CliHost`: the same ``python -m`` entry, without ~1 s of imports a case).
"""

from __future__ import annotations

import subprocess

import aiohttp
import asyncpg
import pytest
from identity.settings import IdentitySettings
from svckit.settings import SettingsError, load_settings

from testkit.clihost import CliHost
from testkit.fixtures import free_port
from testkit.oidc import run_cli

from .conftest import own_provider


def hosted(
    host: CliHost, env: dict[str, str], *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m identity ARGS`` run in the session's command host (answers as :func:`run_cli`)."""
    return host.run("identity", env, *args, stdin=stdin)


def test_missing_secrets_stop_the_process_naming_the_variable(seeded: dict[str, str]) -> None:
    env = {k: v for k, v in seeded.items() if k != "IDENTITY_KEY_ENCRYPTION_KEY"}
    result = run_cli(env, "serve")
    assert result.returncode == 2
    assert "IDENTITY_KEY_ENCRYPTION_KEY is required" in result.stderr


def test_short_secrets_are_refused_without_echoing_them(
    seeded: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SettingsError):
        load_settings(IdentitySettings, env={**seeded, "IDENTITY_SESSION_SECRET": "short-value"})
    err = capsys.readouterr().err
    assert "IDENTITY_SESSION_SECRET" in err
    assert "short-value" not in err, "secrets are never echoed"


def test_seed_requires_the_batch_secret(seeded: dict[str, str], cli_host: CliHost) -> None:
    env = {k: v for k, v in seeded.items() if k != "BATCH_CLIENT_SECRET"}
    result = hosted(cli_host, env, "seed")
    assert result.returncode == 2
    assert "BATCH_CLIENT_SECRET" in result.stderr


async def test_seed_is_idempotent(seeded: dict[str, str], database_url: str) -> None:
    conn = await asyncpg.connect(database_url, server_settings={"search_path": "identity"})
    try:
        before = await conn.fetch("SELECT username, password_hash, roles FROM users ORDER BY username")
        assert run_cli(seeded, "seed").returncode == 0
        after = await conn.fetch("SELECT username, password_hash, roles FROM users ORDER BY username")
        clients = {r["client_id"]: r for r in await conn.fetch("SELECT * FROM clients")}
    finally:
        await conn.close()
    assert [tuple(r) for r in before] == [tuple(r) for r in after]
    assert {("alice", ("employee",)), ("bob", ("manager",)), ("carol", ("auditor",))} <= {
        (r["username"], tuple(r["roles"])) for r in after
    }
    spa = clients["timesheets-spa"]
    assert spa["redirect_uris"] == ["http://localhost:8080/", "http://localhost:8080/callback"]
    assert spa["post_logout_redirect_uris"] == ["http://localhost:8080/"]
    assert spa["first_party"]
    assert spa["secret_hash"] is None
    partner = clients["partner-spa"]
    assert partner["redirect_uris"] == [
        "http://localhost:8080/partner/",
        "http://localhost:8080/partner/callback",
    ]
    assert not partner["first_party"]
    batch = clients["timesheets-batch"]
    assert batch["grant_types"] == ["client_credentials"]
    assert batch["allowed_scopes"] == ["batch:upload"]
    assert batch["secret_hash"].startswith("$argon2id$")


async def test_add_client_generates_a_secret_once(
    seeded: dict[str, str], database_url: str, cli_host: CliHost
) -> None:
    result = run_cli(
        seeded,
        "add-client",
        "reporting-job",
        "--name",
        "Reporting",
        "--confidential",
        "--grant-type",
        "client_credentials",
        "--scope",
        "batch:upload",
    )
    assert result.returncode == 0, result.stderr
    secret = result.stdout.rsplit(": ", 1)[1].strip()
    assert len(secret) >= 40
    conn = await asyncpg.connect(database_url, server_settings={"search_path": "identity"})
    try:
        stored = await conn.fetchval("SELECT secret_hash FROM clients WHERE client_id = 'reporting-job'")
    finally:
        await conn.close()
    assert secret not in stored
    bad = hosted(
        cli_host, seeded, "add-client", "x", "--name", "X", "--public", "--grant-type", "client_credentials"
    )
    assert bad.returncode == 2
    assert "public client" in bad.stderr


@pytest.mark.parametrize(
    ("value", "named"),
    [
        ("Trusted \u202eppA", "U+202E (RIGHT-TO-LEFT OVERRIDE)"),
        ("Payroll\x9b", "control characters"),
        ("\u200b", "blank"),
    ],
)
async def test_add_client_refuses_a_name_drawn_in_another_order_or_with_controls(
    seeded: dict[str, str], database_url: str, value: str, named: str, cli_host: CliHost
) -> None:
    """A client's name is what the consent page tells a person ("<name> wants to …"): an override
    would draw "Trusted \u202eppA" as "TrustedApp". The kit's rule for a name applies, as for a
    user's: one line, exit 2, nothing stored; a good name is stored without surrounding spaces.
    The first case's refusal is a real ``python -m identity`` process, the others run in the host."""
    command = ("add-client", "spoof-app", "--name", value, "--confidential")
    refused = run_cli(seeded, *command) if "\u202e" in value else hosted(cli_host, seeded, *command)
    assert refused.returncode == 2, refused.stdout
    assert named in refused.stderr
    assert "Traceback" not in refused.stderr
    accepted = hosted(
        cli_host, seeded, "add-client", "plain-app", "--name", "  Plain App\u0085", "--confidential"
    )
    assert accepted.returncode == 0, accepted.stderr
    conn = await asyncpg.connect(database_url, server_settings={"search_path": "identity"})
    try:
        rows = await conn.fetch(
            "SELECT client_id, name FROM clients WHERE client_id IN ('spoof-app', 'plain-app')"
        )
        names = {row["client_id"]: row["name"] for row in rows}
    finally:
        await conn.close()
    assert names == {"plain-app": "Plain App"}


def test_add_user_reads_the_password_from_stdin(seeded: dict[str, str], cli_host: CliHost) -> None:
    result = run_cli(
        seeded,
        "add-user",
        "erin",
        "--name",
        "Erin",
        "--email",
        "erin@example.com",
        "--role",
        "employee",
        "--role",
        "auditor",
        stdin="erin-password\n",
    )
    assert result.returncode == 0, result.stderr
    assert "local|erin" in result.stdout
    assert "erin-password" not in result.stdout + result.stderr
    bad = hosted(
        cli_host, seeded, "add-user", "frank", "--name", "F", "--email", "f@example.com", "--role", "admin"
    )
    assert bad.returncode == 2


@pytest.mark.parametrize(
    ("option", "value", "named"),
    [
        ("--name", "Alice\u202eecila", "U+202E (RIGHT-TO-LEFT OVERRIDE)"),
        ("--name", "Alice \u2066Bob\u2069", "U+2066 (LEFT-TO-RIGHT ISOLATE)"),
        ("--name", "Alice\x85Employee", "control characters"),
        ("--name", "Alice\x1b[2J", "control characters"),
        ("--name", "\u200b\u200e", "blank"),
        ("--email", "alice\u202e@example.com", "U+202E (RIGHT-TO-LEFT OVERRIDE)"),
        ("--email", "alice\x9b@example.com", "control characters"),
        ("username", "erin\u202e", "username may only hold"),
    ],
)
async def test_add_user_refuses_names_drawn_in_another_order_or_with_controls(
    seeded: dict[str, str], database_url: str, option: str, value: str, named: str, cli_host: CliHost
) -> None:
    """A user's name and e-mail become the ``name``/``email`` claims, which the gateway forwards and the
    services keep (an approver's queue, the audit trail): the kit's rule for a name (svckit NameText:
    no control characters, no bidirectional controls, not blank) applies where they are set, adding a
    user or renaming one, in one line and exit code 2 like the command's other refusals. The first
    case's refusal is a real ``python -m identity`` process (its password on a pipe), the others run
    in the host."""
    given = {"username": "erin", "--name": "Erin", "--email": "erin@example.com"} | {option: value}
    first = hosted(
        cli_host,
        seeded,
        "add-user",
        "erin",
        "--name",
        "Erin",
        "--email",
        "erin@example.com",
        "--role",
        "employee",
        stdin="erin-password\n",
    )
    assert first.returncode == 0, first.stderr
    command = (
        "add-user",
        given["username"],
        "--name",
        given["--name"],
        "--email",
        given["--email"],
        "--role",
        "employee",
    )
    if (option, value) == ("--name", "Alice\u202eecila"):
        result = run_cli(seeded, *command, stdin="erin-password\n")
    else:
        result = hosted(cli_host, seeded, *command, stdin="erin-password\n")
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert named in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    conn = await asyncpg.connect(database_url, server_settings={"search_path": "identity"})
    try:
        rows = await conn.fetch("SELECT username, name, email FROM users WHERE username LIKE 'erin%'")
    finally:
        await conn.close()
    assert [tuple(r) for r in rows] == [("erin", "Erin", "erin@example.com")]


async def test_add_user_stores_a_name_without_the_whitespace_around_it(
    seeded: dict[str, str], database_url: str, cli_host: CliHost
) -> None:
    """The rule strips surrounding whitespace before it looks (a NEL, U+0085, is whitespace to it):
    what is stored is what was checked, not the raw argument with its trailing C1 control."""
    result = hosted(
        cli_host,
        seeded,
        "add-user",
        "fay",
        "--name",
        " Fay\x85",
        "--email",
        "fay@example.com\u2028",
        "--role",
        "employee",
        stdin="fay-password\n",
    )
    assert result.returncode == 0, result.stderr
    conn = await asyncpg.connect(database_url, server_settings={"search_path": "identity"})
    try:
        row = await conn.fetchrow("SELECT name, email FROM users WHERE username = 'fay'")
    finally:
        await conn.close()
    assert row is not None
    assert tuple(row) == ("Fay", "fay@example.com")


def test_the_seeded_users_pass_the_rule_add_user_applies() -> None:
    """The seed's names are set in code, not typed: held to the same rule, so a change to them that
    breaks it fails here rather than reaching the tokens."""
    from identity.admin import user_text
    from identity.seed import DEMO_USERS

    for _username, name, email, _roles in DEMO_USERS:
        assert user_text("--name", name) == name
        assert user_text("--email", email) == email


@pytest.mark.parametrize("value", ["ftp://x/", "http://localhost:9000/?a=1", "https://id.example/tenant/"])
def test_issuer_must_be_an_http_url(
    seeded: dict[str, str], value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SettingsError):
        load_settings(IdentitySettings, env={**seeded, "IDENTITY_ISSUER": value})
    assert "IDENTITY_ISSUER" in capsys.readouterr().err


def test_the_gateways_issuer_list_is_not_the_providers_issuer(seeded: dict[str, str]) -> None:
    """OIDC_ISSUER lists the issuers the gateway trusts (Auth0 among them, say); the provider reads
    IDENTITY_ISSUER only, so one environment can carry both (make dev, the chart)."""
    env = {k: v for k, v in seeded.items() if k != "IDENTITY_ISSUER"}
    settings = load_settings(
        IdentitySettings, env={**env, "OIDC_ISSUER": "http://localhost:9000/,https://TENANT.auth0.com/"}
    )
    assert settings.identity_issuer == "http://localhost:9000/"


def test_issuer_gets_a_trailing_slash(seeded: dict[str, str]) -> None:
    settings = load_settings(IdentitySettings, env={**seeded, "IDENTITY_ISSUER": "https://id.example"})
    assert settings.identity_issuer == "https://id.example/"
    assert settings.cookie_secure


async def test_failed_client_authentication_is_throttled_per_address(seeded: dict[str, str]) -> None:
    from testkit.oidc import BATCH_SECRET

    with own_provider(
        seeded,
        REDIS_KEY_PREFIX=seeded["REDIS_KEY_PREFIX"] + "client-throttle:",
        CLIENT_AUTH_MAX_FAILURES_PER_ADDRESS="3",
    ) as base:
        url = base + "/oauth/token"
        async with aiohttp.ClientSession() as http:

            async def attempt(secret: str) -> int:
                auth = {"Authorization": aiohttp.encode_basic_auth("timesheets-batch", secret)}
                async with http.post(url, data={"grant_type": "client_credentials"}, headers=auth) as r:
                    return r.status

            assert await attempt(BATCH_SECRET) == 200
            assert [await attempt("wrong") for _ in range(3)] == [401, 401, 401]
            async with http.post(
                url,
                data={"grant_type": "client_credentials"},
                headers={"Authorization": aiohttp.encode_basic_auth("timesheets-batch", BATCH_SECRET)},
            ) as r:
                assert r.status == 429
                assert (await r.json())["error"] == "too_many_attempts"
                assert int(r.headers["Retry-After"]) > 0


@pytest.mark.parametrize(
    "args",
    [
        ("seed",),
        ("rotate-keys",),
        ("add-client", "ci-client", "--name", "CI", "--confidential", "--grant-type", "client_credentials"),
        ("rotate-client-secret", "batch-uploader"),
        ("retire-client-secret", "batch-uploader"),
        ("after-restore",),
    ],
    ids=lambda args: args[0],
)
@pytest.mark.parametrize("database", ["unreachable", "no such database"])
def test_an_admin_command_without_its_database_says_so_in_one_line(
    seeded: dict[str, str], args: tuple[str, ...], database: str, cli_host: CliHost
) -> None:
    """An operator's command (a Job, a kubectl exec) run while Postgres is away, full (no connection
    slots left: CI hit that) or misnamed ended in a Python traceback; it is one line naming the
    command and why, exit 1 — as ``migrate`` and ``serve`` answer the same conditions. ``seed`` runs
    as a real ``python -m identity`` process, the other commands in the host."""
    url = seeded["DATABASE_URL"]
    env = {
        **seeded,
        "DATABASE_URL": (
            f"postgresql://postgres@127.0.0.1:{free_port()}/test"
            if database == "unreachable"
            else url.rsplit("/", 1)[0] + "/no_such_database_here"
        ),
        "DB_CONNECT_TIMEOUT_SECONDS": "2",
    }
    result = run_cli(env, *args) if args[0] == "seed" else hosted(cli_host, env, *args)
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"{args[0]} failed: "), result.stderr
    assert "database" in lines[0]
    assert "postgres@" not in lines[0]  # no URL, no credentials


@pytest.mark.parametrize(
    "value", ["http://timesheets-identity:9000/", "http://id.example/", "http://10.1.2.3:9000/"]
)
def test_a_plain_http_issuer_off_the_loopback_interface_is_refused_at_start(
    seeded: dict[str, str], value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Authlib refuses every authorization request on such an issuer (InsecureTransportError: each
    sign-in answered 500); refused before the port binds instead, naming the way out."""
    with pytest.raises(SettingsError):
        load_settings(IdentitySettings, env={**seeded, "IDENTITY_ISSUER": value})
    assert "IDENTITY_ALLOW_INSECURE_HTTP" in capsys.readouterr().err
    allowed = {**seeded, "IDENTITY_ISSUER": value, "IDENTITY_ALLOW_INSECURE_HTTP": "true"}
    assert load_settings(IdentitySettings, env=allowed).identity_issuer == value


@pytest.mark.parametrize(
    "value", ["http://localhost:9000/", "http://localhost/", "http://127.3.4.5:9000/", "https://id.example/"]
)
def test_an_encrypted_or_loopback_issuer_needs_no_opt_in(seeded: dict[str, str], value: str) -> None:
    env = {k: v for k, v in seeded.items() if k != "IDENTITY_ALLOW_INSECURE_HTTP"}
    assert load_settings(IdentitySettings, env={**env, "IDENTITY_ISSUER": value}).identity_issuer == value
