"""Settings from STOWAGE_* environment variables (and .env): defaults, parsing, refusals."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from app.config import ConfigError, Settings, load_settings
from tests.test_cli import STOWAGE

GiB = 1024**3


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No STOWAGE_* from the outside and no stray .env: only what each test sets."""
    for name in list(os.environ):
        if name.startswith("STOWAGE_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def test_defaults_match_the_contract() -> None:
    s = load_settings()
    assert isinstance(s, Settings)
    assert s.database_url == "postgresql://127.0.0.1:5432/stowage"
    assert s.redis_url == "redis://127.0.0.1:6379/0"
    assert s.cache_url == "file://./var/cache"
    assert s.store_url == "file://./var/store"
    assert s.s3_endpoint_url is None
    assert s.s3_region is None
    assert s.max_upload_size == 5 * GiB
    assert s.profiles_file is None
    assert s.public_url == "http://127.0.0.1:8000"
    assert s.webhook_allow_private is False
    assert s.webhook_retry_delays == "5,30,120,600,1800,3600,10800,21600,43200"
    assert s.retry_delays == [5, 30, 120, 600, 1800, 3600, 10800, 21600, 43200]
    assert s.sweep_interval == 30


def test_readme_operator_defaults() -> None:
    s = load_settings()
    assert s.default_cache_ttl == 86400
    assert s.job_timeout == 60
    assert s.stale_job_after == 5
    assert (s.job_max_attempts, s.job_timeout_max) == (5, 6 * 3600)
    assert s.queue_name == "stowage:queue"
    assert s.db_pool_size == 10
    assert s.worker_max_jobs == 10


def test_without_a_secret_key_links_are_still_signed() -> None:
    s = load_settings()
    assert s.secret_key == ""
    assert len(s.signing_key) >= 32
    # one key per process, not per Settings object: a worker and the API in `dev` agree
    assert load_settings().signing_key == s.signing_key
    assert load_settings(secret_key="abc" * 11).signing_key == b"abc" * 11


def test_environment_variables_are_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    profiles = tmp_path / "profiles.toml"
    profiles.write_text("[profiles.avatar]\nmax_size = 10\n")
    values = {
        "STOWAGE_DATABASE_URL": "postgres://db.example:5433/x",
        "STOWAGE_REDIS_URL": "rediss://cache.example:6380/2",
        "STOWAGE_CACHE_URL": "s3://bucket",
        "STOWAGE_STORE_URL": "s3://bucket/some/prefix",
        "STOWAGE_S3_ENDPOINT_URL": "http://minio:9000",
        "STOWAGE_S3_REGION": "eu-west-3",
        "STOWAGE_MAX_UPLOAD_SIZE": "1048576",
        "STOWAGE_PROFILES_FILE": str(profiles),
        "STOWAGE_PUBLIC_URL": "https://files.example",
        "STOWAGE_SECRET_KEY": "s3cret" * 6,
        "STOWAGE_WEBHOOK_ALLOW_PRIVATE": "true",
        "STOWAGE_WEBHOOK_RETRY_DELAYS": "1, 2,3",
        "STOWAGE_SWEEP_INTERVAL": "7",
        "STOWAGE_QUEUE_NAME": "other:queue",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    s = load_settings()
    assert s.database_url == "postgres://db.example:5433/x"
    assert s.redis_url == "rediss://cache.example:6380/2"
    assert s.cache_url == "s3://bucket"
    assert s.store_url == "s3://bucket/some/prefix"
    assert s.s3_endpoint_url == "http://minio:9000"
    assert s.s3_region == "eu-west-3"
    assert s.max_upload_size == 1048576
    assert s.profiles_file == profiles
    assert s.public_url == "https://files.example"
    assert s.signing_key == b"s3cret" * 6
    assert s.webhook_allow_private is True
    assert s.retry_delays == [1, 2, 3]
    assert s.sweep_interval == 7
    assert s.queue_name == "other:queue"


def test_unprefixed_variables_are_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "mysql://x")
    monkeypatch.setenv("SWEEP_INTERVAL", "0")
    s = load_settings()
    assert s.database_url == "postgresql://127.0.0.1:5432/stowage"
    assert s.sweep_interval == 30


def test_dotenv_file_is_read_and_the_environment_wins(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / ".env").write_text("STOWAGE_SWEEP_INTERVAL=11\nSTOWAGE_PUBLIC_URL=http://dotenv\n")
    s = load_settings()
    assert s.sweep_interval == 11
    assert s.public_url == "http://dotenv"
    monkeypatch.setenv("STOWAGE_SWEEP_INTERVAL", "12")
    assert load_settings().sweep_interval == 12


def test_overrides_beat_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STOWAGE_SWEEP_INTERVAL", "12")
    assert load_settings(sweep_interval=3).sweep_interval == 3


BAD_VALUES = [
    ("STOWAGE_DATABASE_URL", "mysql://x"),
    ("STOWAGE_DATABASE_URL", "127.0.0.1:5432/stowage"),
    ("STOWAGE_REDIS_URL", "http://x"),
    ("STOWAGE_CACHE_URL", "ftp://x"),
    ("STOWAGE_CACHE_URL", "file://"),
    ("STOWAGE_STORE_URL", "s3://"),
    ("STOWAGE_STORE_URL", "/var/store"),
    ("STOWAGE_WEBHOOK_RETRY_DELAYS", "5,abc"),
    ("STOWAGE_WEBHOOK_RETRY_DELAYS", "5,-1"),
    ("STOWAGE_WEBHOOK_RETRY_DELAYS", ","),
    ("STOWAGE_PROFILES_FILE", "/nonexistent/profiles.toml"),
    ("STOWAGE_SWEEP_INTERVAL", "0"),
    ("STOWAGE_SWEEP_INTERVAL", "-5"),
    ("STOWAGE_SWEEP_INTERVAL", "soon"),
    ("STOWAGE_MAX_UPLOAD_SIZE", "0"),
    ("STOWAGE_MAX_UPLOAD_SIZE", "5GB"),
    ("STOWAGE_WEBHOOK_ALLOW_PRIVATE", "perhaps"),
    ("STOWAGE_JOB_TIMEOUT", "0"),
]


@pytest.mark.parametrize(("name", "value"), BAD_VALUES)
def test_bad_environment_values_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as e:
        load_settings()
    assert name in str(e.value)


@pytest.mark.parametrize(("name", "value"), BAD_VALUES)
def test_bad_overrides_name_the_variable(name: str, value: str) -> None:
    field = name.removeprefix("STOWAGE_").lower()
    with pytest.raises(ConfigError) as e:
        load_settings(**{field: value})
    assert name in str(e.value)


def test_every_bad_variable_is_named_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STOWAGE_DATABASE_URL", "mysql://x")
    monkeypatch.setenv("STOWAGE_SWEEP_INTERVAL", "0")
    monkeypatch.setenv("STOWAGE_CACHE_URL", "ftp://x")
    with pytest.raises(ConfigError) as e:
        load_settings()
    message = str(e.value)
    for name in ("STOWAGE_DATABASE_URL", "STOWAGE_SWEEP_INTERVAL", "STOWAGE_CACHE_URL"):
        assert name in message
    # and only those
    assert "STOWAGE_REDIS_URL" not in message
    assert "STOWAGE_STORE_URL" not in message


def test_a_bad_dotenv_value_names_the_variable(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("STOWAGE_REDIS_URL=memcached://x\n")
    with pytest.raises(ConfigError, match="STOWAGE_REDIS_URL"):
        load_settings()


@pytest.mark.parametrize("args", [
    ["apps", "list"],
    ["migrate"],
    ["worker"],
    ["serve", "--port", "1"],
    ["dev", "--port", "1"],
])
def test_cli_refuses_to_start_with_a_bad_environment(tmp_path: Path, args: list[str]) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOWAGE_")}
    env["STOWAGE_DATABASE_URL"] = "mysql://x"
    result = subprocess.run([STOWAGE, *args], env=env, cwd=tmp_path, capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 2, result
    assert "STOWAGE_DATABASE_URL" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    # it stopped before doing anything: no ./var made by a storage backend
    assert not (tmp_path / "var").exists()
