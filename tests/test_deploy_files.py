"""The deployment files (Dockerfile, .dockerignore, docker-compose.yml, deploy/) cannot drift
from the code: every command they run is a real `stowage` command line, every STOWAGE_*
variable they set is a setting (and the values are a valid configuration), ports and the health
path agree, and the start-up order is right. Docker itself is not needed: the files are read
and checked against the code, and deploy/minio-init.sh is run with a stand-in `mc`."""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import shlex
import subprocess
import tomllib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import yaml

from app.cli import build_parser
from app.config import ConfigError, Settings, load_settings
from app.main import create_app
from app.scan.clamd import parse_clamd_url

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPOSE = ROOT / "docker-compose.yml"

PREFIX = Settings.model_config.get("env_prefix", "STOWAGE_")
# Read by app/migrate.py itself, not a Settings field (checked below).
NON_SETTINGS_VARS = {"STOWAGE_MIGRATIONS_DIR"}
LONG_RUNNING = {"always", "unless-stopped"}


# -- Dockerfile ----------------------------------------------------------------------------


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]

    def last(self, keyword: str) -> str | None:
        found = self.all(keyword)
        return found[-1] if found else None

    def env(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for args in self.all("ENV"):
            words = shlex.split(args)
            if words and "=" not in words[0]:  # legacy `ENV KEY value`
                out[words[0]] = " ".join(words[1:])
                continue
            for word in words:
                key, _, value = word.partition("=")
                out[key] = value
        return out

    def copies(self) -> list[tuple[dict[str, str], list[str], str]]:
        """(flags, sources, destination) of each COPY."""
        out = []
        for args in self.all("COPY"):
            words = json.loads(args) if args.startswith("[") else shlex.split(args)
            flags = {}
            while words and words[0].startswith("--"):
                key, _, value = words.pop(0)[2:].partition("=")
                flags[key] = value
            out.append((flags, words[:-1], words[-1]))
        return out


def parse_dockerfile(text: str) -> list[Stage]:
    logical: list[str] = []
    buf = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not buf):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        logical.append(buf + line)
        buf = ""
    assert not buf, "Dockerfile ends inside a line continuation"
    stages: list[Stage] = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword, args = keyword.upper(), " ".join(args.split())
        if keyword == "FROM":
            words = args.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=words[0], name=name))
        else:
            assert stages, f"{keyword} before the first FROM"
            stages[-1].instructions.append((keyword, args))
    return stages


def exec_form(args: str, what: str) -> list[str]:
    assert args.startswith("["), (
        f"{what} must use the exec (JSON) form, so that the process is PID 1 and gets SIGTERM"
    )
    argv = json.loads(args)
    assert isinstance(argv, list) and all(isinstance(a, str) for a in argv)
    return argv


def split_healthcheck(args: str) -> tuple[str, list[str]]:
    options, sep, command = args.partition("CMD ")
    assert sep, f"HEALTHCHECK without CMD: {args!r}"
    return options, exec_form(command, "HEALTHCHECK")


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse_dockerfile(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def runtime(stages: list[Stage]) -> Stage:
    return stages[-1]


# -- docker-compose.yml --------------------------------------------------------------------

_VAR = re.compile(
    r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
    r"|\$(?P<bare>[A-Za-z_][A-Za-z0-9_]*)"
)


# What an operator must set (`${VAR:?message}`: compose refuses to start without it), and
# the value the checks below use for it.
REQUIRED_VARS = {"STOWAGE_SECRET_KEY": "k" * 64}


def interpolate(value: Any) -> Any:
    """Resolve `${VAR:-default}` as Compose does with an empty environment: the file must work
    without any variable set, but for the few it requires (REQUIRED_VARS)."""
    if isinstance(value, dict):
        return {k: interpolate(v) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        if m.group("op") in (":-", "-"):
            return m.group("arg")
        name = m.group("name") or m.group("bare")
        if m.group("op") == ":?" and name in REQUIRED_VARS:
            return REQUIRED_VARS[name]
        pytest.fail(f"{value!r}: ${name} has no default, so the file does not work as it is")

    return _VAR.sub(sub, value)


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def argv_of(value: Any) -> list[str]:
    return shlex.split(value) if isinstance(value, str) else [str(v) for v in value]


def depends_on(service: dict[str, Any]) -> dict[str, str]:
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return dict.fromkeys(deps, "service_started")
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


def duration_s(value: str) -> float:
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", value)
    assert parts and "".join(n + u for n, u in parts) == value, f"bad duration {value!r}"
    return sum(float(n) * units[u] for n, u in parts)


@pytest.fixture(scope="module")
def raw_compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def compose(raw_compose: dict[str, Any]) -> dict[str, Any]:
    return interpolate(raw_compose)


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


@pytest.fixture(scope="module")
def ours(services: dict[str, dict[str, Any]], runtime: Stage) -> dict[str, list[str]]:
    """Services that run the Stowage image -> their command line (the image CMD if unset)."""
    images = {s["image"] for s in services.values() if "build" in s and "image" in s}
    out = {}
    for name, s in services.items():
        if "build" in s or s.get("image") in images:
            assert "entrypoint" not in s, f"{name}: the commands below assume no entrypoint"
            default = exec_form(runtime.last("CMD") or "[]", "CMD")
            out[name] = argv_of(s["command"]) if "command" in s else default
    assert out, "no service runs the Stowage image"
    return out


def by_verb(ours: dict[str, list[str]], verb: str) -> str:
    names = [n for n, argv in ours.items() if argv[1:2] == [verb]]
    assert len(names) == 1, f"expected one service running `stowage {verb}`, found {names}"
    return names[0]


def parse_stowage(argv: list[str], where: str) -> argparse.Namespace:
    assert argv and argv[0] == "stowage", f"{where}: {argv} does not run `stowage`"
    try:
        return build_parser().parse_args(argv[1:])
    except SystemExit:
        pytest.fail(f"{where}: `{shlex.join(argv)}` is not a valid stowage command line")


# -- the Dockerfile --------------------------------------------------------------------------


def test_dockerfile_is_multi_stage_on_one_python(stages: list[Stage]) -> None:
    assert len(stages) >= 2
    builder, runtime = stages[0], stages[-1]
    assert builder.base == "python:3.11-slim" and builder.name
    # the venv copied across points at the builder's interpreter: it must be the same one
    assert runtime.base == builder.base
    flags_and_sources = [(f, s, d) for f, s, d in runtime.copies() if f.get("from")]
    assert ({"from": builder.name}, ["/opt/venv"], "/opt/venv") in flags_and_sources
    assert "/opt/venv/bin" in runtime.env().get("PATH", "").split(":")


def test_image_installs_the_project_without_test_extras(stages: list[Stage]) -> None:
    builder = stages[0]
    runs = " ; ".join(run for stage in stages for run in stage.all("RUN"))
    installs = re.findall(r"pip install ([^;&|]*)", runs)
    assert any(re.search(r"(^|\s)\.(\s|$)", args) for args in installs), installs
    for args in installs:
        assert "-e" not in args.split() and "--editable" not in args, "install non-editable"
        assert not re.search(r"\.\[", args), f"extras in the image: pip install {args}"
    # everything setuptools packages, and the readme it reads, reaches the builder
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    copied = {PurePosixPath(src).as_posix().rstrip("/") for _, srcs, _ in builder.copies()
              for src in srcs}
    for folder in {top.split("/")[0] for _, top in _package_folders(project)}:
        assert folder in copied, f"{folder}/ (packages' source) is not copied into the build"
    assert "pyproject.toml" in copied
    assert project["project"]["readme"] in copied


def _package_folders(project: dict[str, Any]) -> list[tuple[str, str]]:
    """(package, its source folder) for each package pyproject.toml lists."""
    tool = project["tool"]["setuptools"]
    mapped = tool.get("package-dir", {})
    return [(name, mapped.get(name, name.replace(".", "/"))) for name in tool["packages"]]


def test_every_package_folder_is_in_the_wheel() -> None:
    """The packages are listed by name (one of them, app.migrations, lives elsewhere): a new
    subpackage left off the list would be missing from the wheel."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    listed = {folder for _, folder in _package_folders(project)}
    on_disk = {str(d.relative_to(ROOT)) for top in ("app", "worker", "migrations")
               for d in [ROOT / top, *(ROOT / top).rglob("*")]
               if d.is_dir() and d.name != "__pycache__"
               and any(f.is_file() for f in d.iterdir())}
    assert on_disk == listed


def test_runtime_stage_does_not_run_as_root(runtime: Stage) -> None:
    user = runtime.last("USER")
    assert user, "the runtime stage sets no USER: it would run as root"
    name = user.split(":")[0]
    assert name not in ("root", "0"), f"USER {user}"
    runs = " ".join(runtime.all("RUN"))
    if name.isdigit():
        assert re.search(rf"useradd\b[^;&]*--uid {name}\b", runs), f"no user with uid {name}"


def test_runtime_user_can_write_the_default_storage(runtime: Stage) -> None:
    """The default STOWAGE_CACHE_URL/STORE_URL are file://./var/... under WORKDIR."""
    workdir = PurePosixPath(runtime.last("WORKDIR") or "/")
    owner = (runtime.last("USER") or "").split(":")[0]
    owned = [
        (m.group(1).split(":")[0], [workdir / p for p in m.group(2).split()])
        for run in runtime.all("RUN")
        for m in re.finditer(r"chown\s+(?:-R\s+)?(\S+)\s+([^;&|]+)", run)
    ]
    for url_field in ("cache_url", "store_url"):
        url = Settings.model_fields[url_field].default
        if not url.startswith("file://"):
            continue
        path = workdir / url.removeprefix("file://")
        parents = {path, *path.parents}
        assert any(who == owner and parents.intersection(paths) for who, paths in owned), (
            f"{url_field} default {url} -> {path} is not chowned to the runtime user {owner}"
        )


def test_the_build_checks_the_installed_package(stages: list[Stage]) -> None:
    """What the installed package can do is tested on a real wheel (tests/test_artifact.py);
    here only that the image build runs the same self-check, from outside the source tree, and
    that nothing points the image at files beside the package."""
    runs = " ".join(run for stage in stages for run in stage.all("RUN"))
    assert re.search(r"cd /\S* && stowage check", runs), "the build does not run `stowage check`"
    assert not any("STOWAGE_MIGRATIONS_DIR" in stage.env() for stage in stages), (
        "the migrations are package data; the image needs no STOWAGE_MIGRATIONS_DIR")


def test_dockerfile_command_and_port(runtime: Stage) -> None:
    assert runtime.last("ENTRYPOINT") is None, "compose commands assume no ENTRYPOINT"
    argv = exec_form(runtime.last("CMD") or "", "CMD")
    args = parse_stowage(argv, "Dockerfile CMD")
    assert args.command == "serve"
    assert args.host == "0.0.0.0", "the API must listen on all interfaces in a container"
    assert runtime.last("EXPOSE") == str(args.port)


def test_dockerfile_env_vars_are_settings(runtime: Stage) -> None:
    unknown = {k for k in runtime.env() if k.startswith(PREFIX)} - settings_vars()
    assert not unknown, f"the Dockerfile sets variables that are not settings: {unknown}"


async def test_healthcheck_path_is_served_without_dependencies(runtime: Stage) -> None:
    args = runtime.last("HEALTHCHECK")
    assert args, "no HEALTHCHECK"
    _, argv = split_healthcheck(args)
    assert argv[0] == "python" and argv[1] == "-c", "the image has no curl: use python"
    compile(argv[2], "<HEALTHCHECK>", "exec")
    urls = re.findall(r"https?://[^'\"\s]+", argv[2])
    assert len(urls) == 1, urls
    url = urlsplit(urls[0])
    assert url.hostname in ("127.0.0.1", "localhost")
    cmd = parse_stowage(exec_form(runtime.last("CMD") or "", "CMD"), "Dockerfile CMD")
    assert url.port == cmd.port, "HEALTHCHECK probes another port than the API listens on"
    # Asked of the app itself (routers may be nested), without its lifespan (ASGITransport
    # does not run it): Postgres, Redis and the storages are not opened, and liveness must not
    # need them.
    transport = httpx.ASGITransport(app=create_app(load_settings(_env_file=None)))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        assert (await client.get(url.path + "-no-such-route")).status_code == 404
        response = await client.get(url.path)
    assert response.status_code == 200, (
        f"HEALTHCHECK path {url.path} answers {response.status_code}: {response.text[:200]}"
    )


def test_dockerignore_keeps_what_the_build_copies() -> None:
    patterns = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()
                if line.strip() and not line.startswith("#")]

    def ignored(path: str) -> bool:
        result = False
        for pattern in patterns:
            negate = pattern.startswith("!")
            pattern = pattern.lstrip("!").strip("/")
            candidates = [pattern, pattern.removeprefix("**/")]
            parts = PurePosixPath(path).parts
            prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
            if any(fnmatch.fnmatchcase(p, c) for p in prefixes for c in candidates):
                result = not negate
        return result

    for stage in parse_dockerfile(DOCKERFILE.read_text()):
        for flags, sources, _ in stage.copies():
            if flags.get("from"):
                continue
            for src in sources:
                assert (ROOT / src).exists(), f"COPY {src}: no such file"
                assert not ignored(src), f"COPY {src}, but .dockerignore leaves it out"
    for private in (".env", ".venv", ".git", "var"):
        assert ignored(private), f".dockerignore must keep {private} out of the build context"


# -- docker-compose.yml ----------------------------------------------------------------------


def settings_vars() -> set[str]:
    return {PREFIX + name.upper() for name in Settings.model_fields} | NON_SETTINGS_VARS


def test_every_stowage_command_is_valid(ours: dict[str, list[str]]) -> None:
    for name, argv in ours.items():
        parse_stowage(argv, f"service {name}")


def test_compose_requires_the_secret_key(raw_compose: dict[str, Any]) -> None:
    """Compose refuses to start without STOWAGE_SECRET_KEY, saying how to make one: no
    public default key signs anyone's links."""
    value = raw_compose["x-stowage-env"]["STOWAGE_SECRET_KEY"]
    assert re.fullmatch(r"\$\{STOWAGE_SECRET_KEY:\?.*openssl rand.*\}", value), value


def test_compose_env_vars_are_settings(compose: dict[str, Any]) -> None:
    blocks = {name: environment(s) for name, s in compose["services"].items()}
    blocks.update({k: v for k, v in compose.items() if k.startswith("x-") and
                   isinstance(v, dict) and any(str(key).startswith(PREFIX) for key in v)})
    for where, env in blocks.items():
        unknown = {k for k in env if k.startswith(PREFIX)} - settings_vars()
        assert not unknown, f"{where} sets variables that are not settings: {unknown}"


def _mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Container path -> the host file mounted there (bind mounts of this project's files)."""
    out = {}
    for volume in service.get("volumes") or []:
        host, _, rest = str(volume).partition(":")
        if host.startswith((".", "/")):
            out[rest.split(":")[0]] = (ROOT / host).resolve()
    return out


# Set by docker-compose.yml itself (the services' addresses in compose's network, the mounted
# profiles file): a .env cannot change them, by design.
TOPOLOGY_VARS = {"STOWAGE_DATABASE_URL", "STOWAGE_REDIS_URL", "STOWAGE_CACHE_URL",
                 "STOWAGE_STORE_URL", "STOWAGE_S3_REGION", "STOWAGE_PROFILES_FILE"}


def test_compose_every_setting_is_reachable(raw_compose: dict[str, Any],
                                            ours: dict[str, list[str]]) -> None:
    """Every setting can be given without editing the file: the project's .env reaches the
    Stowage containers (env_file), and what the file sets itself is either topology or
    taken from the environment (${VAR:-default})."""
    for name in ours:
        service = raw_compose["services"][name]
        env_files = service.get("env_file") or raw_compose["x-stowage-image"].get("env_file")
        assert {"path": ".env", "required": False} in env_files, name
    for key, value in raw_compose["x-stowage-env"].items():
        if key.startswith(PREFIX) and key not in TOPOLOGY_VARS:
            assert str(value).startswith("${" + key), f"{key} cannot be set from .env"
    assert (ROOT / "deploy" / "profiles.toml").is_file()


def test_compose_env_is_a_valid_configuration(
    services: dict[str, dict[str, Any]], ours: dict[str, list[str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    envs = {name: environment(services[name]) for name in ours}
    first = next(iter(envs.values()))
    for name, env in envs.items():
        assert env == first, f"{name} is configured differently from the other Stowage services"
    for key in list(os.environ):
        if key.startswith(PREFIX) or key.startswith("AWS_"):
            monkeypatch.delenv(key)
    mounts = _mounts(services[next(iter(ours))])
    for key, value in first.items():
        monkeypatch.setenv(key, str(mounts.get(value, value)))  # a mounted file: the host's
    try:
        settings = load_settings(_env_file=None)
    except ConfigError as e:
        pytest.fail(f"docker-compose.yml: {e}")
    assert settings.secret_key, "links would break on every restart without a secret key"
    uses_s3 = any(u.startswith("s3://") for u in (settings.cache_url, settings.store_url))
    if uses_s3:
        assert settings.s3_endpoint_url and settings.s3_region
        assert first.get("AWS_ACCESS_KEY_ID") and first.get("AWS_SECRET_ACCESS_KEY")


def test_services_named_in_urls_exist_and_credentials_match(
    raw_compose: dict[str, Any], services: dict[str, dict[str, Any]], ours: dict[str, list[str]]
) -> None:
    env = environment(services[next(iter(ours))])
    db = urlsplit(env["STOWAGE_DATABASE_URL"])
    pg = environment(services[str(db.hostname)])
    assert (db.username, db.password, db.path.lstrip("/")) == (
        pg["POSTGRES_USER"], pg["POSTGRES_PASSWORD"], pg["POSTGRES_DB"]
    )
    assert urlsplit(env["STOWAGE_REDIS_URL"]).hostname in services
    s3 = urlsplit(env["STOWAGE_S3_ENDPOINT_URL"])
    minio_name = str(s3.hostname)
    assert minio_name in services, f"STOWAGE_S3_ENDPOINT_URL names no service: {s3.hostname}"
    # the same expressions, so overriding MINIO_ROOT_* changes both sides
    raw = raw_compose["services"]
    app_env = environment(raw[next(iter(ours))])
    minio_env = environment(raw[minio_name])
    assert app_env["AWS_ACCESS_KEY_ID"] == minio_env["MINIO_ROOT_USER"]
    assert app_env["AWS_SECRET_ACCESS_KEY"] == minio_env["MINIO_ROOT_PASSWORD"]
    assert len(environment(services[minio_name])["MINIO_ROOT_PASSWORD"]) >= 8  # MinIO's rule


def test_api_port_matches_the_image_and_public_url(
    services: dict[str, dict[str, Any]], ours: dict[str, list[str]], runtime: Stage
) -> None:
    api = by_verb(ours, "serve")
    args = parse_stowage(ours[api], f"service {api}")
    assert args.host == "0.0.0.0"
    assert runtime.last("EXPOSE") == str(args.port)
    published = []
    for spec in services[api].get("ports", []):
        *_, host, container = str(spec).split(":")
        if int(container) == args.port:
            published.append(int(host))
    assert published, f"{api} publishes no port to its --port {args.port}"
    public = urlsplit(environment(services[api])["STOWAGE_PUBLIC_URL"])
    assert public.port in published, "STOWAGE_PUBLIC_URL does not point at the published port"


def test_migrate_runs_before_the_api_and_worker(
    services: dict[str, dict[str, Any]], ours: dict[str, list[str]]
) -> None:
    migrate = by_verb(ours, "migrate")
    assert services[migrate].get("restart", "no") == "no", "a one-shot must not restart"
    db_host = urlsplit(environment(services[migrate])["STOWAGE_DATABASE_URL"]).hostname
    assert depends_on(services[migrate]).get(str(db_host)) == "service_healthy"
    for verb in ("serve", "worker"):
        name = by_verb(ours, verb)
        assert depends_on(services[name]).get(migrate) == "service_completed_successfully", (
            f"{name} may start before the migrations are applied"
        )


def test_dependencies_can_be_met(services: dict[str, dict[str, Any]], runtime: Stage) -> None:
    for name, service in services.items():
        for dep, condition in depends_on(service).items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            target = services[dep]
            if condition == "service_healthy":
                check = target.get("healthcheck") or {}
                has_own = bool(check.get("test")) and not check.get("disable")
                inherits = "build" in target and runtime.last("HEALTHCHECK") and not check
                assert has_own or inherits, f"{name} waits for {dep} to be healthy: no check"
            elif condition == "service_completed_successfully":
                assert target.get("restart", "no") == "no", f"{dep} restarts: never completes"


def test_buckets_exist_before_the_api_and_worker(
    services: dict[str, dict[str, Any]], ours: dict[str, list[str]]
) -> None:
    init = [n for n, s in services.items() if any("minio-init" in str(v) for v in
                                                  argv_of(s.get("entrypoint") or []))]
    assert len(init) == 1, "one service must run deploy/minio-init.sh"
    for verb in ("serve", "worker"):
        name = by_verb(ours, verb)
        assert depends_on(services[name]).get(init[0]) == "service_completed_successfully"


def test_only_the_api_has_the_image_healthcheck(
    services: dict[str, dict[str, Any]], ours: dict[str, list[str]]
) -> None:
    """The image's HEALTHCHECK probes the API: on the worker or migrate it could only fail."""
    for name, argv in ours.items():
        check = services[name].get("healthcheck") or {}
        if argv[1:2] != ["serve"]:
            assert check.get("disable") is True or check.get("test") in (["NONE"], "NONE"), (
                f"{name} inherits the API's HEALTHCHECK"
            )


def test_worker_and_api_restart(services: dict[str, dict[str, Any]],
                                ours: dict[str, list[str]]) -> None:
    for verb in ("worker", "serve"):
        name = by_verb(ours, verb)
        assert services[name].get("restart") in LONG_RUNNING, f"{name} has no restart policy"


def test_stop_grace_covers_the_shutdown_grace(
    services: dict[str, dict[str, Any]], ours: dict[str, list[str]]
) -> None:
    if "shutdown_grace" not in Settings.model_fields:
        pytest.skip("no STOWAGE_SHUTDOWN_GRACE setting")
    for verb in ("worker", "serve"):
        name = by_verb(ours, verb)
        env = environment(services[name])
        grace = float(env.get(PREFIX + "SHUTDOWN_GRACE",
                              Settings.model_fields["shutdown_grace"].default))
        stop = duration_s(str(services[name].get("stop_grace_period", "10s")))
        assert stop > grace, f"{name}: Docker kills it after {stop} s, before its {grace} s"


def test_the_worker_scans_with_a_clamav_service(
    raw_compose: dict[str, Any], services: dict[str, dict[str, Any]],
    ours: dict[str, list[str]]
) -> None:
    """STOWAGE_CLAMD_URL names a ClamAV service of this file (the official image, which runs
    freshclam itself) with its own health check, its signatures in a volume, and the worker
    waiting for it to be healthy: a `scan = true` profile works out of the box."""
    for name in ours:
        url = environment(services[name]).get("STOWAGE_CLAMD_URL", "")
        assert url, f"{name}: no STOWAGE_CLAMD_URL"
    address = parse_clamd_url(environment(services[next(iter(ours))])["STOWAGE_CLAMD_URL"])
    assert isinstance(address, tuple), "clamd is another container: tcp://HOST:PORT"
    host, port = address
    assert host in services, f"STOWAGE_CLAMD_URL names no service: {host}"
    clamav = services[host]
    assert clamav["image"].partition(":")[0] == "clamav/clamav", clamav["image"]
    assert port == 3310, "the official image's clamd listens on 3310"
    check = clamav.get("healthcheck") or {}
    assert not check.get("disable") and "clamdcheck.sh" in argv_of(check.get("test") or []), (
        f"{host}: the image's clamdcheck.sh is not its health check"
    )
    # the first start downloads the whole database before clamd answers
    assert duration_s(str(check.get("start_period", "0s"))) >= 300, (
        f"{host}: start_period too short for the first signature download"
    )
    volumes = {str(v).split(":")[1]: str(v).split(":")[0] for v in clamav.get("volumes", [])}
    assert volumes.get("/var/lib/clamav") in (raw_compose.get("volumes") or {}), (
        f"{host}: its signature database is not kept in a named volume"
    )
    assert clamav.get("restart") in LONG_RUNNING, f"{host} has no restart policy"
    worker = by_verb(ours, "worker")
    assert depends_on(services[worker]).get(host) == "service_healthy", (
        f"{worker} may start scanning before clamd has its signatures"
    )


def test_redis_keeps_its_queue(services: dict[str, dict[str, Any]],
                               ours: dict[str, list[str]]) -> None:
    env = environment(services[next(iter(ours))])
    redis_name = str(urlsplit(env["STOWAGE_REDIS_URL"]).hostname)
    argv = argv_of(services[redis_name].get("command") or [])
    assert "--appendonly" in argv and argv[argv.index("--appendonly") + 1] == "yes"
    assert any(str(v).split(":")[1] == "/data" for v in services[redis_name].get("volumes", []))


def test_every_service_has_an_image_or_a_build(services: dict[str, dict[str, Any]],
                                               stages: list[Stage]) -> None:
    stage_names = {s.name for s in stages}
    for name, service in services.items():
        assert "image" in service or "build" in service, f"{name}: no image and no build"
        build = service.get("build")
        if build is not None:
            build = {"context": build} if isinstance(build, str) else build
            context = ROOT / build.get("context", ".")
            assert (context / build.get("dockerfile", "Dockerfile")).is_file(), name
            if "target" in build:
                assert build["target"] in stage_names, f"{name}: no stage {build['target']}"
        else:
            image = service["image"]
            tag = image.rsplit("/", 1)[-1].partition(":")[2]
            assert tag and tag != "latest", f"{name}: pin the image {image!r} to a tag"
        for volume in service.get("volumes", []):
            source = str(volume).split(":")[0]
            if source.startswith("."):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"


def test_minio_init_creates_the_buckets_stowage_uses(
    services: dict[str, dict[str, Any]], ours: dict[str, list[str]], tmp_path: Path
) -> None:
    """Run deploy/minio-init.sh for real, with a stand-in `mc` that logs its arguments."""
    name = next(n for n, s in services.items()
                if any("minio-init" in str(v) for v in argv_of(s.get("entrypoint") or [])))
    service = services[name]
    entry = argv_of(service["entrypoint"])
    mounts = {str(v).split(":")[1]: str(v).split(":")[0] for v in service.get("volumes", [])}
    script = ROOT / mounts[entry[-1]]
    log = tmp_path / "mc.log"
    (tmp_path / "mc").write_text(f'#!/bin/sh\necho "$*" >> {shlex.quote(str(log))}\n')
    (tmp_path / "mc").chmod(0o755)
    env = {"PATH": f"{tmp_path}:{os.environ['PATH']}", **environment(service)}
    subprocess.run([entry[0], str(script)], env=env, check=True, capture_output=True,
                   timeout=30)
    calls = log.read_text().splitlines()

    app_env = environment(services[next(iter(ours))])
    minio = environment(services[str(urlsplit(app_env["STOWAGE_S3_ENDPOINT_URL"]).hostname)])
    alias, url, user, password = calls[0].split()[2:]
    assert calls[0].startswith("alias set ")
    assert (url, user, password) == (
        app_env["STOWAGE_S3_ENDPOINT_URL"], minio["MINIO_ROOT_USER"], minio["MINIO_ROOT_PASSWORD"]
    )
    made = {c.split()[-1] for c in calls[1:] if c.startswith("mb ")}
    wanted = {f"{alias}/{app_env[k].removeprefix('s3://').split('/')[0]}"
              for k in ("STOWAGE_CACHE_URL", "STOWAGE_STORE_URL")
              if app_env[k].startswith("s3://")}
    assert wanted and wanted <= made, f"buckets created {made}, Stowage uses {wanted}"


def test_s3_lifecycle_is_a_valid_put_bucket_lifecycle_configuration() -> None:
    """deploy/s3-lifecycle.json (for AWS S3; MinIO ignores the action, see the minio service)
    is checked against botocore's own model of the request."""
    import botocore.session
    from botocore.validate import validate_parameters

    config = json.loads((ROOT / "deploy" / "s3-lifecycle.json").read_text())
    s3 = botocore.session.get_session().get_service_model("s3")
    shape = s3.operation_model("PutBucketLifecycleConfiguration").input_shape
    validate_parameters({"Bucket": "stowage-cache", "LifecycleConfiguration": config}, shape)
    rules = [r for r in config["Rules"] if r["Status"] == "Enabled"]
    assert any(r.get("AbortIncompleteMultipartUpload", {}).get("DaysAfterInitiation")
               for r in rules)
