"""The `stowage` console script, run for real in a subprocess against the test database."""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx
import pytest

from app.auth.service import KEY_PREFIX
from app.config import Settings
from app.migrate import migration_files
from tests.conftest import PG_BASE, drop_database, env_for
from tests.factories import age

# The console script pip installed next to the interpreter ([project.scripts] in pyproject).
STOWAGE = str(Path(sys.executable).with_name("stowage"))
CLI_TIMEOUT = 60.0


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str

    def __str__(self) -> str:
        return f"exit {self.returncode}\n--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"


async def run_cli(*args: str, env: dict[str, str], cwd: Path | None = None) -> Result:
    proc = await asyncio.create_subprocess_exec(
        STOWAGE, *args, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), CLI_TIMEOUT)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"stowage {' '.join(args)} did not finish in {CLI_TIMEOUT}s") from None
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


@pytest.fixture
async def new_database() -> AsyncIterator[Callable[[], str]]:
    """Names of databases that do not exist yet; whatever got created is dropped afterwards."""
    names: list[str] = []

    def make() -> str:
        name = f"stowage_clitest_{secrets.token_hex(4)}"
        names.append(name)
        return f"{PG_BASE}/{name}"

    yield make
    for name in names:
        await drop_database(name)


@pytest.fixture
def cli_env(settings: Settings) -> dict[str, str]:
    return env_for(settings)


def only_json(result: Result) -> dict:
    assert result.returncode == 0, str(result)
    lines = result.stdout.splitlines()
    assert len(lines) == 1, f"--json must print exactly one line on stdout\n{result}"
    data = json.loads(result.stdout)
    assert isinstance(data, dict), str(result)
    return data


def auth(api_key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"}


def test_console_script_is_installed() -> None:
    assert Path(STOWAGE).is_file(), f"{STOWAGE} missing: is the project installed (pip -e .)?"


# --- apps and keys -------------------------------------------------------------------------------

async def test_apps_create_json_prints_one_object_and_the_key_works(
    client: httpx.AsyncClient, cli_env: dict[str, str]
) -> None:
    result = await run_cli("apps", "create", "cli-demo", "--json", env=cli_env)
    data = only_json(result)
    assert set(data) == {"app_id", "key_id", "api_key"}
    uuid.UUID(data["app_id"])
    uuid.UUID(data["key_id"])
    assert isinstance(data["api_key"], str) and len(data["api_key"]) >= 32

    r = await client.get("/v1/attachments", headers=auth(data["api_key"]))
    assert r.status_code == 200, r.text
    assert r.json()["items"] == []
    r = await client.get("/v1/attachments", headers=auth(data["api_key"] + "x"))
    assert r.status_code == 401


async def test_apps_create_without_json_shows_id_and_key(
    client: httpx.AsyncClient, cli_env: dict[str, str]
) -> None:
    result = await run_cli("apps", "create", "cli-plain", env=cli_env)
    assert result.returncode == 0, str(result)
    listed = await run_cli("apps", "list", env=cli_env)
    line = next(ln for ln in listed.stdout.splitlines() if "cli-plain" in ln)
    app_id = line.split()[0]
    assert app_id in result.stdout
    # the printed key is the one that works
    key = next(tok for tok in result.stdout.split() if tok.startswith(KEY_PREFIX))
    r = await client.get("/v1/attachments", headers=auth(key))
    assert r.status_code == 200, r.text


async def test_apps_list_keys_create_list_and_revoke(
    client: httpx.AsyncClient, cli_env: dict[str, str]
) -> None:
    name = f"cli-{secrets.token_hex(3)}"
    first = only_json(await run_cli("apps", "create", name, "--json", env=cli_env))
    app_id = first["app_id"]

    listed = await run_cli("apps", "list", env=cli_env)
    assert listed.returncode == 0, str(listed)
    assert any(app_id in ln and name in ln for ln in listed.stdout.splitlines()), str(listed)

    second = only_json(await run_cli("keys", "create", app_id, "--json", env=cli_env))
    assert set(second) == {"app_id", "key_id", "api_key", "scopes"}
    assert second["scopes"] == ["upload", "read", "delete", "webhooks"]
    assert second["app_id"] == app_id
    assert second["key_id"] != first["key_id"]
    assert second["api_key"] != first["api_key"]
    for key in (first["api_key"], second["api_key"]):
        r = await client.get("/v1/attachments", headers=auth(key))
        assert r.status_code == 200, r.text

    keys = await run_cli("keys", "list", app_id, env=cli_env)
    assert keys.returncode == 0, str(keys)
    lines = [ln for ln in keys.stdout.splitlines() if ln.strip()]
    assert len(lines) == 2, str(keys)
    assert {ln.split()[0] for ln in lines} == {first["key_id"], second["key_id"]}
    # the secret itself is never shown again
    assert first["api_key"] not in keys.stdout and second["api_key"] not in keys.stdout

    revoked = await run_cli("keys", "revoke", first["key_id"], env=cli_env)
    assert revoked.returncode == 0, str(revoked)
    r = await client.get("/v1/attachments", headers=auth(first["api_key"]))
    assert r.status_code == 401, r.text
    r = await client.get("/v1/attachments", headers=auth(second["api_key"]))
    assert r.status_code == 200, r.text

    # revoking twice is harmless, and the key stays dead
    again = await run_cli("keys", "revoke", first["key_id"], env=cli_env)
    assert again.returncode == 0, str(again)
    r = await client.get("/v1/attachments", headers=auth(first["api_key"]))
    assert r.status_code == 401

    keys = await run_cli("keys", "list", app_id, env=cli_env)
    by_id = {ln.split()[0]: ln for ln in keys.stdout.splitlines() if ln.strip()}
    assert set(by_id) == {first["key_id"], second["key_id"]}
    assert "revoked" in by_id[first["key_id"]]
    assert "revoked" not in by_id[second["key_id"]]


@pytest.mark.parametrize("verb", [["keys", "list"], ["keys", "create"], ["keys", "revoke"]])
async def test_unknown_ids_fail_with_a_message(cli_env: dict[str, str], verb: list[str]) -> None:
    missing = str(uuid.uuid4())
    result = await run_cli(*verb, missing, env=cli_env)
    assert result.returncode != 0, str(result)
    assert result.stdout == "", str(result)
    assert missing in result.stderr, str(result)
    assert "Traceback" not in result.stderr, str(result)


@pytest.mark.parametrize("args", [
    ["keys", "revoke", "not-a-uuid"],
    ["keys", "list", "not-a-uuid"],
    ["keys", "create", "not-a-uuid", "--json"],
    ["apps", "create"],
    ["apps"],
    ["nonsense"],
])
async def test_usage_errors_exit_2(cli_env: dict[str, str], args: list[str]) -> None:
    result = await run_cli(*args, env=cli_env)
    assert result.returncode == 2, str(result)
    assert result.stdout == ""
    assert "usage:" in result.stderr
    if "not-a-uuid" in args:
        assert "not-a-uuid" in result.stderr


# --- migrate -------------------------------------------------------------------------------------

async def applied_migrations(dsn: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetch("SELECT version, applied_at FROM schema_migrations ORDER BY 1")
    finally:
        await conn.close()


EXPECTED = sorted(p.name for p in migration_files())


async def test_migrate_creates_the_database_and_is_idempotent(
    cli_env: dict[str, str], new_database: Callable[[], str]
) -> None:
    assert EXPECTED, "no migrations found"
    dsn = new_database()
    env = {**cli_env, "STOWAGE_DATABASE_URL": dsn}

    first = await run_cli("migrate", env=env)
    assert first.returncode == 0, str(first)
    rows = await applied_migrations(dsn)
    assert [r["version"] for r in rows] == EXPECTED
    conn = await asyncpg.connect(dsn)
    try:
        tables = {r["tablename"] for r in await conn.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    finally:
        await conn.close()
    assert {"apps", "api_keys", "attachments"} <= tables

    again = await run_cli("migrate", env=env)
    assert again.returncode == 0, str(again)
    for name in EXPECTED:
        assert name not in again.stdout, f"{name} applied twice\n{again}"
    assert await applied_migrations(dsn) == rows  # same versions, same applied_at


async def test_concurrent_migrate_on_a_new_database(
    cli_env: dict[str, str], new_database: Callable[[], str]
) -> None:
    dsn = new_database()
    env = {**cli_env, "STOWAGE_DATABASE_URL": dsn}
    # Several at once: both the CREATE DATABASE and the migrations themselves race.
    results = await asyncio.gather(*(run_cli("migrate", env=env) for _ in range(6)))
    for result in results:
        assert result.returncode == 0, str(result)
    rows = await applied_migrations(dsn)
    assert [r["version"] for r in rows] == EXPECTED
    # each migration was applied by exactly one of them
    for name in EXPECTED:
        assert sum(name in r.stdout for r in results) == 1, "\n".join(map(str, results))

    again = await run_cli("migrate", env=env)
    assert again.returncode == 0, str(again)
    assert not any(name in again.stdout for name in EXPECTED), str(again)
    assert await applied_migrations(dsn) == rows


async def test_migrate_on_an_existing_database(
    database_url: str, cli_env: dict[str, str]
) -> None:
    before = await applied_migrations(database_url)
    result = await run_cli("migrate", env={**cli_env, "STOWAGE_DATABASE_URL": database_url})
    assert result.returncode == 0, str(result)
    assert await applied_migrations(database_url) == before


# --- help ----------------------------------------------------------------------------------------

VERBS = ["migrate", "apps", "keys", "serve", "worker", "dev"]


def run_help(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([STOWAGE, *args, "--help"], capture_output=True, text=True,
                          timeout=CLI_TIMEOUT, check=False)


def test_top_level_help_names_every_verb() -> None:
    result = run_help()
    assert result.returncode == 0, result.stderr
    for verb in VERBS:
        assert verb in result.stdout, f"{verb!r} missing from stowage --help"


@pytest.mark.parametrize(("args", "mentions"), [
    (["migrate"], []),
    (["apps"], ["create", "list"]),
    (["apps", "create"], ["NAME", "--json"]),
    (["apps", "list"], []),
    (["keys"], ["create", "list", "revoke"]),
    (["keys", "create"], ["APP", "--json"]),
    (["keys", "list"], ["APP"]),
    (["keys", "revoke"], ["KEY_ID"]),
    (["serve"], ["--host", "--port"]),
    (["worker"], []),
    (["dev"], ["--host", "--port"]),
])
def test_subcommand_help(args: list[str], mentions: list[str]) -> None:
    result = run_help(*args)
    assert result.returncode == 0, result.stderr
    assert f"stowage {' '.join(args)}" in result.stdout
    for word in mentions:
        assert word.lower() in result.stdout.lower(), f"{word!r} missing from {args} --help"


async def test_serve_says_so_when_it_cannot_start(settings, res):
    """A port already taken: serve exits non-zero (it used to be 0 only by uvicorn.run's own
    check, which GracefulServer must keep) and names the problem. (`res`: the storages are
    this database's, so the start gets as far as the port.)"""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = await run_cli("serve", "--port", str(port), env=env_for(settings))
    assert result.returncode == 3, result
    assert "address already in use" in (result.stdout + result.stderr).lower(), result


async def test_check_passes_on_this_install(settings):
    result = await run_cli("check", env=env_for(settings))
    assert result.returncode == 0 and "ok: this install is complete" in result.stdout, result
    assert re.search(r"migrations: [1-9]", result.stdout), result


@pytest.mark.parametrize("command", ["serve", "worker"])
async def test_serve_and_worker_refuse_to_start_without_a_shared_secret_key(settings, command):
    env = env_for(settings)
    env["STOWAGE_SECRET_KEY"] = ""
    result = await run_cli(command, "--port", "1", env=env) if command == "serve" else \
        await run_cli(command, env=env)
    assert result.returncode == 2, result
    assert "STOWAGE_SECRET_KEY is not set" in result.stderr and "openssl rand" in result.stderr
    env["STOWAGE_SECRET_KEY"] = "too-short"
    result = await run_cli(command, env=env)
    assert result.returncode == 2, result
    assert "STOWAGE_SECRET_KEY: Value error, must be at least 32 bytes" in result.stderr, result


async def test_doctor_fails_without_a_secret_key(settings):
    env = env_for(settings)
    env["STOWAGE_SECRET_KEY"] = ""
    result = await run_cli("doctor", env=env)
    assert result.returncode == 1, result
    assert "FAIL  secret key: STOWAGE_SECRET_KEY is not set" in result.stdout, result


async def test_app_names_are_unique_renamable_and_listed_as_json(cli_env):
    name = f"unique-{secrets.token_hex(3)}"
    first = only_json(await run_cli("apps", "create", name, "--json", env=cli_env))
    again = await run_cli("apps", "create", name, "--json", env=cli_env)
    assert again.returncode == 1 and f"an app named {name!r} exists already" in again.stderr
    assert again.stdout == ""
    listed = json.loads((await run_cli("apps", "list", "--json", env=cli_env)).stdout)
    assert [a["name"] for a in listed].count(name) == 1
    renamed = await run_cli("apps", "rename", first["app_id"], f"{name}-2", env=cli_env)
    assert renamed.returncode == 0 and f"{name}-2" in renamed.stdout, renamed
    listed = json.loads((await run_cli("apps", "list", "--json", env=cli_env)).stdout)
    assert {a["app_id"]: a["name"] for a in listed}[first["app_id"]] == f"{name}-2"
    keys = json.loads((await run_cli("keys", "list", first["app_id"], "--json",
                                     env=cli_env)).stdout)
    assert [k["key_id"] for k in keys] == [first["key_id"]] and keys[0]["revoked_at"] is None
    for bad in ("", "   ", "a\x01b", "x" * 101):
        r = await run_cli("apps", "create", bad, env=cli_env)
        assert r.returncode == 1 and "1 to 100 printable characters" in r.stderr, (bad, r)


async def test_version(cli_env):
    result = await run_cli("--version", env=cli_env)
    assert result.returncode == 0 and re.fullmatch(r"stowage \d+\.\d+\.\d+\S*\n", result.stdout)


CONFIG_MISTAKES = [
    ("[profile.avatar]\nmax_size = 10\n", {}, "unknown table [profile]"),
    ('[profiles.avatar]\ntypes = ["image/jpg"]\n', {}, "did you mean 'image/jpeg'?"),
    ('[profiles.notes]\ntypes = ["text/*"]\n[profiles.notes.derivatives.thumb]\nwidth = 10\n'
     'height = 10\n', {}, "derivatives are rendered from images"),
    (None, {"STOWAGE_PUBLIC_URL": "not a url"},
     "STOWAGE_PUBLIC_URL: Value error, must be an absolute http:// or https:// URL"),
]


@pytest.mark.parametrize("command", ["serve", "worker", "dev", "doctor"])
@pytest.mark.parametrize(("profiles", "env", "message"), CONFIG_MISTAKES)
async def test_configuration_mistakes_stop_every_command_with_one_clean_message(
        settings, tmp_path, command, profiles, env, message):
    cli = {**env_for(settings), **env}
    if profiles is not None:
        path = tmp_path / "profiles.toml"
        path.write_text(profiles)
        cli["STOWAGE_PROFILES_FILE"] = str(path)
    result = await run_cli(command, env=cli)
    assert result.returncode != 0, result
    assert message in result.stdout + result.stderr, result
    assert "Traceback" not in result.stdout + result.stderr, result


async def test_a_misspelt_variable_is_named_with_the_one_meant(settings, tmp_path):
    env = {**env_for(settings), "STOWAGE_PROFILE_FILE": str(tmp_path / "p.toml")}
    result = await run_cli("doctor", env=env)
    hint = "STOWAGE_PROFILE_FILE is not a setting; it is ignored (did you mean" \
        " STOWAGE_PROFILES_FILE?)"
    assert hint in result.stdout and "warning: " + hint in result.stderr, result


async def test_apps_delete_asks_then_removes_everything_in_the_background(cli_env, res):
    from app.auth import service as auth
    from tests.conftest import api_client, files_under, run_worker

    name = f"doomed-{secrets.token_hex(3)}"
    async with api_client(res) as client:
        made = await auth.create_app(res.pool, name)
        headers = {"Authorization": f"Bearer {made.api_key}"}
        ids = []
        for i in range(2):
            r = await client.post("/v1/attachments", headers=headers,
                                  files={"file": (f"{i}.txt", b"doomed %d" % i)})
            ids.append(r.json()["id"])
        await run_worker(res)
        env = {**cli_env, **env_for(res.settings)}
        refused = await run_cli("apps", "delete", str(made.app_id), env=env)
        assert refused.returncode == 1 and "--yes" in refused.stderr  # no terminal to ask
        r = await client.get(f"/v1/attachments/{ids[0]}", headers=headers)
        assert r.status_code == 200  # nothing changed
        done = await run_cli("apps", "delete", str(made.app_id), "--yes", env=env)
        assert done.returncode == 0, done
        r = await client.get(f"/v1/attachments/{ids[0]}", headers=headers)
        assert r.status_code == 401  # its keys stopped working at once
        async with res.pool.acquire() as conn:
            rows = await conn.fetch("SELECT state, error FROM attachments WHERE app_id = $1",
                                    made.app_id)
        assert {(r["state"], r["error"]["code"]) for r in rows} == {("deleted", "app_deleted")}
        listed = json.loads((await run_cli("apps", "list", "--json", env=env)).stdout)
        assert name not in [a["name"] for a in listed]
        again = await run_cli("apps", "create", name, "--json", env=env)
        assert again.returncode == 0, again  # the name is free again
        # the worker removes the files, then the app
        await age(res, res.settings.stale_job_after + 0.2)
        await res.sweep.run()
        await run_worker(res)
        report = await res.sweep.run()
        assert report.apps_removed == [made.app_id]
        store = Path(res.settings.store_url.removeprefix("file://"))
        assert files_under(store) == []
