"""`stowage`: the operator's command line."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any
from uuid import UUID

from app.config import ConfigError, Settings, load_settings, unknown_variables
from app.errors import StowageError

log = logging.getLogger("stowage")


def _setup_logging(settings: Settings) -> None:
    from app.observability.logs import configure_logging

    configure_logging(settings.log_level, settings.log_format)


def _uuid(value: str) -> UUID:
    try:
        return UUID(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a UUID: {value!r}") from None


def _scopes(value: str) -> tuple[str, ...]:
    from app.auth.scopes import parse_scopes

    try:
        return parse_scopes(value)
    except StowageError as e:
        raise argparse.ArgumentTypeError(e.detail) from None


_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def _quota(value: str) -> int | str:
    """Bytes: an integer, with an optional unit (10GB, 512MiB), or `none` (no quota)."""
    text = value.strip().lower().replace("_", "")
    if text == "none":
        return "none"
    digits = text.rstrip("abcdefghijklmnopqrstuvwxyz").strip()
    unit = text[len(digits):].strip()
    if not digits.isdigit() or unit not in _UNITS:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a number of bytes: give e.g. 1000000, 500MB, 10GiB, or none")
    n = int(digits) * _UNITS[unit]
    if n > 2**63 - 1:
        raise argparse.ArgumentTypeError(f"{value!r} is more bytes than can be counted")
    return n


def _rate(value: str) -> int:
    text = value.strip()
    if not text.isdigit() or int(text) > 2**31 - 1:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a number of uploads a minute (0 or more; 0: no limit)")
    return int(text)


def _grace(value: str) -> float:
    from app.ops.fsck import grace_seconds

    try:
        return grace_seconds(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _positive(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"not a whole number of 1 or more: {value!r}")
    return int(value)


async def _with_pool(settings: Settings, fn: Callable[[Any], Awaitable[Any]]) -> Any:
    from app.db import create_pool

    pool = await create_pool(settings.database_url, max_size=2)
    try:
        return await fn(pool)
    finally:
        await pool.close()


def cmd_migrate(settings: Settings, args: argparse.Namespace) -> int:
    from app.migrate import migrate

    applied = asyncio.run(migrate(settings.database_url))
    print(f"applied {len(applied)} migration(s)" + (": " + ", ".join(applied) if applied else ""))
    return 0


def _print_key(new: Any, as_json: bool, name: str | None = None) -> None:
    if as_json:
        out = {"app_id": str(new.app_id), "key_id": str(new.key_id), "api_key": new.api_key}
        if name is None:  # keys create: which scopes it has (apps create: all, as always)
            out["scopes"] = list(new.scopes)
        print(json.dumps(out))
        return
    if name is not None:
        print(f"app:     {new.app_id}  ({name})")
    print(f"key id:  {new.key_id}")
    print(f"api key: {new.api_key}")
    print(f"scopes:  {','.join(new.scopes)}")
    print("Keep the API key now: it is stored hashed and cannot be shown again.", file=sys.stderr)


def cmd_apps_create(settings: Settings, args: argparse.Namespace) -> int:
    from app.auth import service

    new = asyncio.run(_with_pool(settings, lambda pool: service.create_app(pool, args.name)))
    _print_key(new, args.json, args.name)
    return 0


def cmd_apps_list(settings: Settings, args: argparse.Namespace) -> int:
    from app.auth import service
    from app.uploads.quotas import usage_by_app

    async def listed(pool: Any) -> tuple[Any, Any]:
        async with pool.acquire() as conn:
            return await service.list_apps(pool), await usage_by_app(conn)

    rows, usage = asyncio.run(_with_pool(settings, listed))
    if args.json:
        print(json.dumps([{"app_id": str(r["id"]), "name": r["name"], "keys": r["keys"],
                           "created_at": r["created_at"].isoformat(),
                           "quota_bytes": r["quota_bytes"], "rate_limit": r["rate_limit"],
                           "bytes": usage.get(r["id"], (0, 0))[0],
                           "attachments": usage.get(r["id"], (0, 0))[1]} for r in rows]))
        return 0
    for row in rows:
        created = f"{row['created_at']:%Y-%m-%d}"
        used, attachments = usage.get(row["id"], (0, 0))
        quota = row["quota_bytes"]
        share = f" ({used / quota:.0%})" if quota else ""
        print(f"{row['id']}  {row['name']}  keys={row['keys']}  created={created}"
              f"  attachments={attachments}  bytes={used}"
              f"  quota={quota if quota is not None else 'none'}{share}"
              f"  rate={row['rate_limit'] or 'none'}{'/min' if row['rate_limit'] else ''}")
    return 0


def cmd_apps_update(settings: Settings, args: argparse.Namespace) -> int:
    from app.auth import service

    changes: dict[str, Any] = {}
    if args.quota_bytes is not None:
        changes["quota_bytes"] = None if args.quota_bytes == "none" else args.quota_bytes
    if args.rate_limit is not None:
        changes["rate_limit"] = args.rate_limit
    row = asyncio.run(_with_pool(settings, lambda pool: service.update_limits(
        pool, args.app, **changes)))
    print(f"{row['id']}  {row['name']}"
          f"  quota={row['quota_bytes'] if row['quota_bytes'] is not None else 'none'}"
          f"  rate={row['rate_limit'] or 'none'}{'/min' if row['rate_limit'] else ''}")
    return 0


def cmd_apps_delete(settings: Settings, args: argparse.Namespace) -> int:
    from app.auth import service

    async def name_of(pool: Any) -> str:
        for row in await service.list_apps(pool):
            if row["id"] == args.app:
                return str(row["name"])
        raise ConfigError(f"no app {args.app}")

    name = asyncio.run(_with_pool(settings, name_of))
    if not args.yes:
        if not sys.stdin.isatty():
            print(f"stowage: deleting app {name!r} removes every file of it; run again with"
                  " --yes to confirm", file=sys.stderr)
            return 1
        typed = input(f"Delete app {name!r} and every file of it? Type its name to confirm: ")
        if typed.strip() != name:
            print("stowage: not deleted", file=sys.stderr)
            return 1
    asyncio.run(_with_pool(settings, lambda pool: service.delete_app(pool, args.app)))
    print(f"deleted app {args.app} ({name}): its keys no longer work; its files are removed"
          " in the background by the worker")
    return 0


def cmd_apps_rename(settings: Settings, args: argparse.Namespace) -> int:
    from app.auth import service

    row = asyncio.run(_with_pool(settings, lambda pool: service.rename_app(pool, args.app,
                                                                           args.name)))
    print(f"{row['id']}  {row['name']}")
    return 0


def cmd_keys_create(settings: Settings, args: argparse.Namespace) -> int:
    from app.auth import service

    new = asyncio.run(_with_pool(settings, lambda pool: service.create_key(pool, args.app,
                                                                           args.scopes)))
    _print_key(new, args.json)
    return 0


def cmd_keys_list(settings: Settings, args: argparse.Namespace) -> int:
    from app.auth import service

    rows = asyncio.run(_with_pool(settings, lambda pool: service.list_keys(pool, args.app)))
    if args.json:
        print(json.dumps([{"key_id": str(r["id"]), "app_id": str(r["app_id"]),
                           "prefix": r["prefix"], "created_at": r["created_at"].isoformat(),
                           "revoked_at": r["revoked_at"] and r["revoked_at"].isoformat(),
                           "scopes": list(r["scopes"])}
                          for r in rows]))
        return 0
    for row in rows:
        status = f"revoked {row['revoked_at']:%Y-%m-%d %H:%M}" if row["revoked_at"] else "active"
        print(f"{row['id']}  {row['prefix']}…  {status}  scopes={','.join(row['scopes'])}"
              f"  created={row['created_at']:%Y-%m-%d}")
    return 0


def cmd_keys_revoke(settings: Settings, args: argparse.Namespace) -> int:
    from app.auth import service

    row = asyncio.run(_with_pool(settings, lambda pool: service.revoke_key(pool, args.key_id)))
    print(f"revoked {row['id']}")
    return 0


def cmd_doctor(settings: Settings, args: argparse.Namespace) -> int:
    from app.ops.doctor import diagnose, report

    text, healthy = report(asyncio.run(diagnose(settings)))
    print(text)
    return 0 if healthy else 1


def cmd_check(settings: Settings, args: argparse.Namespace) -> int:
    from app.selfcheck import selfcheck

    for line in selfcheck(settings):
        print(line)
    print("ok: this install is complete")
    return 0


def cmd_fsck(settings: Settings, args: argparse.Namespace) -> int:
    from app.bootstrap import build_services
    from app.ops.fsck_report import FsckReport, render

    if args.force and not args.repair:
        raise ConfigError("--force goes with --repair")

    async def check() -> FsckReport:
        async with build_services(settings) as services:
            return await services.fsck.check(repair=args.repair, grace=args.grace,
                                             force=args.force)

    report = asyncio.run(check())
    print(render(report, as_json=args.json))
    return report.exit_code


def _check_profiles(settings: Settings) -> None:
    from app.profiles import ProfileError, load_profiles

    try:
        load_profiles(settings.profiles_file)
    except ProfileError as e:
        raise ConfigError(f"invalid profiles file: {e}") from None


def cmd_storage_adopt(settings: Settings, args: argparse.Namespace) -> int:
    import contextlib

    from app.db import create_pool
    from app.storage_identity.service import adopt, open_targets

    async def run() -> tuple[Any, Any, Any]:
        async with contextlib.AsyncExitStack() as stack:
            [target] = await open_targets(stack, settings, [args.role])
            pool = await create_pool(settings.database_url, max_size=1)
            stack.push_async_callback(pool.close)
            old, marker = await adopt(pool, target)
            return target, old, marker

    target, old, marker = asyncio.run(run())
    print(f"{target.role} storage {target.where} is storage {marker.id}, recorded as this"
          " database's " + target.role + " storage"
          + (f" (in place of storage {old['storage_id']}, last seen at {old['location']})"
             if old is not None and old["storage_id"] != marker.id else ""))
    print("Run `stowage fsck` to see how its files compare with the database.", file=sys.stderr)
    return 0


def _require_secret_key(settings: Settings) -> None:
    from app.config import MISSING_SECRET_KEY

    if not settings.secret_key:
        raise ConfigError(MISSING_SECRET_KEY)


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    import uvicorn

    from app.main import create_app
    from app.server import GracefulServer, StartupErrors, serve_processes, usable_cpus

    _require_secret_key(settings)
    workers = args.workers or settings.api_workers or usable_cpus()
    if workers > 1:
        # the processes would each refuse a bad configuration; say it once, as below
        asyncio.run(_check_services(settings))
        return serve_processes(settings, args.host, args.port, workers)
    # SIGTERM: stop accepting, let in-flight uploads finish within the grace period, exit 0
    app = StartupErrors(create_app(settings))
    config = uvicorn.Config(app, host=args.host, port=args.port,
                            log_config=None, timeout_graceful_shutdown=settings.shutdown_grace)
    server = GracefulServer(config)
    try:
        server.run()  # on uvicorn's loop (uvloop where installed), as uvicorn.run does
    except SystemExit:
        # uvicorn exits 3 when the lifespan fails: a configuration error (a refused storage,
        # ...) is the operator's to fix; say which, and exit 2 as for the others
        if app.error is not None:
            raise app.error from None
        raise
    # a failed start (port taken) returns from serve() without having served
    return 0 if server.started else 3


async def _check_services(settings: Settings) -> None:
    """Build the services once and close them: what each API process does first (profiles,
    Postgres, Redis, the storages and their identity), with its ConfigErrors."""
    from app.bootstrap import build_services

    async with build_services(settings):
        pass


def cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    from worker.settings import build_worker

    _require_secret_key(settings)
    if settings.worker_metrics_port:
        from app.observability.metrics import serve_worker_metrics

        last = settings.worker_metrics_port + settings.worker_metrics_ports - 1
        port = serve_worker_metrics(settings.worker_metrics_host, settings.worker_metrics_port,
                                    settings.worker_metrics_ports)
        if port is None:
            log.warning("worker metrics off: ports %d-%d are all taken (STOWAGE_WORKER_METRICS"
                        "_PORT, STOWAGE_WORKER_METRICS_PORTS)", settings.worker_metrics_port, last)
        else:
            log.info("worker metrics on http://%s:%d/metrics", settings.worker_metrics_host, port)
    build_worker(settings).run()
    return 0


def cmd_dev(settings: Settings, args: argparse.Namespace) -> int:
    from app.devserver import run_dev
    from app.observability.logs import configure_logging

    if "log_format" not in settings.model_fields_set:
        configure_logging(settings.log_level, "text")  # a human is watching

    asyncio.run(run_dev(settings, args.host, args.port))
    return 0


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("stowage")
    except PackageNotFoundError:  # run from a checkout that is not installed
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stowage",
        description="Stowage, a self-hosted upload service. Configured by STOWAGE_* environment"
        " variables (and a .env file).",
    )
    parser.add_argument("--version", action="version", version=f"stowage {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("migrate", help="create the database if missing and apply migrations")
    p.set_defaults(fn=cmd_migrate)

    apps = sub.add_parser("apps", help="client apps").add_subparsers(dest="apps", required=True)
    p = apps.add_parser("create", help="create an app and its first API key")
    p.add_argument("name")
    p.add_argument("--json", action="store_true", help="print {app_id, key_id, api_key} only")
    p.set_defaults(fn=cmd_apps_create)
    p = apps.add_parser("list", help="list apps")
    p.add_argument("--json", action="store_true", help="print a JSON array")
    p.set_defaults(fn=cmd_apps_list)
    p = apps.add_parser("delete", help="delete an app: its keys stop working at once, its"
                        " attachments and files are removed in the background")
    p.add_argument("app", type=_uuid, help="app id")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p.set_defaults(fn=cmd_apps_delete)
    p = apps.add_parser("update", help="set an app's storage quota and rate limit")
    p.add_argument("app", type=_uuid, help="app id")
    p.add_argument("--quota-bytes", type=_quota, default=None, metavar="N",
                   help="bytes its live files may take (originals, derivatives, variants):"
                   " an integer, with a unit if you like (500MB, 10GiB), or none")
    p.add_argument("--rate-limit", type=_rate, default=None, metavar="N",
                   help="uploads per minute, across every API instance; 0: no limit")
    p.set_defaults(fn=cmd_apps_update)
    p = apps.add_parser("rename", help="give an app another (unique) name")
    p.add_argument("app", type=_uuid, help="app id")
    p.add_argument("name")
    p.set_defaults(fn=cmd_apps_rename)

    keys = sub.add_parser("keys", help="API keys").add_subparsers(dest="keys", required=True)
    p = keys.add_parser("create", help="create another API key for an app")
    p.add_argument("app", type=_uuid, help="app id")
    p.add_argument("--scopes", type=_scopes, default=None, metavar="SCOPES",
                   help="comma-separated, of upload,read,delete,webhooks (default: all four);"
                   " a front-end's key has only upload")
    p.add_argument("--json", action="store_true", help="print {app_id, key_id, api_key} only")
    p.set_defaults(fn=cmd_keys_create)
    p = keys.add_parser("list", help="list an app's keys, one a line, id first")
    p.add_argument("app", type=_uuid, help="app id")
    p.add_argument("--json", action="store_true", help="print a JSON array")
    p.set_defaults(fn=cmd_keys_list)
    p = keys.add_parser("revoke", help="revoke a key; it stops working at once")
    p.add_argument("key_id", type=_uuid)
    p.set_defaults(fn=cmd_keys_revoke)

    for name, fn, helptext in (
        ("serve", cmd_serve, "run the HTTP API (uvicorn)"),
        ("dev", cmd_dev, "migrate, then run the API and a worker in one process (./var storage)"),
    ):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--host", default="127.0.0.1")
        p.add_argument("--port", type=int, default=8000)
        if fn is cmd_serve:
            p.add_argument("--workers", type=_positive, default=0, metavar="N",
                           help="API processes (default: STOWAGE_API_WORKERS, else one per"
                           " core this process may use)")
        p.set_defaults(fn=fn)
    p = sub.add_parser("worker", help="run the arq worker (promotion, deletion, webhooks, sweeps)")
    p.set_defaults(fn=cmd_worker)
    p = sub.add_parser("check", help="check that this install is complete (every module,"
                       " template, static file and migration); needs no services")
    p.set_defaults(fn=cmd_check)
    p = sub.add_parser("doctor", help="check configuration, PostgreSQL, Redis and both storages")
    p.set_defaults(fn=cmd_doctor)
    storage = sub.add_parser("storage", help="the storages' identities").add_subparsers(
        dest="storage", required=True)
    p = storage.add_parser(
        "adopt", help="record the configured storage of ROLE as this database's, in place of"
        " the one recorded (which serve, worker and fsck otherwise insist on): after moving or"
        " restoring a storage without its identity marker, or replacing a lost one")
    p.add_argument("role", choices=["cache", "store"])
    p.set_defaults(fn=cmd_storage_adopt)
    p = sub.add_parser("fsck", help="compare both storages with PostgreSQL: orphan files and"
                       " attachments whose files are missing")
    p.add_argument("--repair", action="store_true",
                   help="remove orphans older than --grace; mark attachments with missing files"
                   " failed (file_missing)")
    p.add_argument("--grace", type=_grace, default=3600.0, metavar="SECONDS",
                   help="leave objects younger than this alone (default 3600: uploads in flight"
                   " have their file before their row)")
    p.add_argument("--force", action="store_true",
                   help="repair even when that marks more than 10%% of the attachments failed"
                   " or removes more than 10%% of the objects (and more than 5): refused"
                   " without it, as that many usually means the wrong storage")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(fn=cmd_fsck)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()
        for warning in unknown_variables(os.environ):
            print(f"stowage: warning: {warning}", file=sys.stderr)
        if getattr(args, "fn", None) in (cmd_serve, cmd_worker, cmd_dev, cmd_check):
            _check_profiles(settings)  # before anything starts (dev: before it migrates)
    except ConfigError as e:
        print(f"stowage: {e}", file=sys.stderr)
        return 2
    _setup_logging(settings)
    try:
        return args.fn(settings, args)
    except ConfigError as e:
        print(f"stowage: {e}", file=sys.stderr)
        return 2
    except StowageError as e:
        print(f"stowage: {e.detail}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

