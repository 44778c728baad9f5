"""Settings: every knob is a ``STOWAGE_*`` environment variable (or a ``.env`` line)."""

from __future__ import annotations

import difflib
import secrets
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.scan.clamd import parse_clamd_url
from app.storage.url import StorageURL

GiB = 1024**3
MIN_SECRET_KEY_BYTES = 32
MISSING_SECRET_KEY = (
    "STOWAGE_SECRET_KEY is not set: it signs download links, and the API and the worker must"
    " share it (each would otherwise sign with a key of its own, and links in webhooks would"
    " answer 403). Set it to at least 32 random bytes, e.g. the output of `openssl rand -hex 32`"
)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="STOWAGE_", env_file=".env", extra="ignore", validate_default=True
    )

    database_url: str = "postgresql://127.0.0.1:5432/stowage"
    redis_url: str = "redis://127.0.0.1:6379/0"
    cache_url: str = "file://./var/cache"
    store_url: str = "file://./var/store"
    # where infected files go (a storage URL like the cache's); empty: they are removed
    quarantine_url: str = ""
    # tcp://HOST:PORT or unix:///PATH of a ClamAV daemon; needed by profiles with scan = true
    clamd_url: str = ""
    s3_endpoint_url: str | None = None
    s3_region: str | None = None
    # the S3 endpoint as clients reach it, for presigned URLs (default: s3_endpoint_url)
    s3_public_endpoint_url: str | None = None
    max_upload_size: int = Field(default=5 * GiB, gt=0)
    profiles_file: Path | None = None
    public_url: str = "http://127.0.0.1:8000"
    secret_key: str = ""
    # turns the operator's dashboard (/dashboard) on; empty: off (404)
    admin_token: str = ""
    # origins (scheme://host[:port], comma-separated, or *) allowed to call /v1 from a
    # browser; empty: none, CORS off
    cors_origins: str = ""
    webhook_allow_private: bool = False
    # after a secret rotation the replaced secret keeps signing (a second signature in
    # webhook-signature) this many seconds, for receivers to switch over; 0: stops at once
    webhook_secret_overlap: int = Field(default=24 * 3600, ge=0)
    webhook_retry_delays: str = "5,30,120,600,1800,3600,10800,21600,43200"
    sweep_interval: int = Field(default=30, gt=0)
    # temp files and unfinished multipart uploads of writers that died are removed once
    # this old (a live writer keeps its own fresh); looked for every half of it, at most
    # every 10 minutes
    leftover_grace: int = Field(default=3600, gt=0)
    webhook_timeout: float = Field(default=10.0, gt=0)
    # Deliveries run beside file work, never in its job slots: at most webhook_concurrency
    # at once per worker process, at most webhook_endpoint_concurrency at once per endpoint
    # (all workers together), and a name lookup waits at most webhook_dns_timeout seconds.
    webhook_concurrency: int = Field(default=10, gt=0)
    webhook_endpoint_concurrency: int = Field(default=4, gt=0)
    webhook_dns_timeout: float = Field(default=5.0, gt=0)
    # an endpoint failing this long without a single success is disabled (default 5 days)
    webhook_disable_after: int = Field(default=5 * 24 * 3600, gt=0)

    # Not in the public contract, but operators need them.
    db_pool_size: int = Field(default=10, gt=0)
    default_cache_ttl: int = Field(default=24 * 3600, gt=0)
    # A job's deadline: job_timeout plus the file's size at job_min_throughput (bytes/s), at
    # most job_timeout_max; a promotion or reprocess that fails (or runs out of time)
    # job_max_attempts times gives up and the attachment becomes failed.
    job_timeout: int = Field(default=60, gt=0)
    job_min_throughput: int = Field(default=4 * 1024 * 1024, gt=0)
    job_timeout_max: int = Field(default=6 * 3600, gt=0)
    job_max_attempts: int = Field(default=5, gt=0)
    # Work found in Postgres with no job in Redis is enqueued again by the next sweep, once
    # it is this old (the API enqueues right after its commit; this covers that moment).
    stale_job_after: int = Field(default=5, gt=0)
    worker_max_jobs: int = Field(default=10, gt=0)
    # `stowage serve` processes; 0: one per core the process may use (`--workers` wins)
    api_workers: int = Field(default=0, ge=0)
    download_url_ttl: int = Field(default=3600, gt=0)
    # an incomplete tus upload untouched this long is removed (S3 multipart aborted)
    tus_expiry: int = Field(default=24 * 3600, gt=0)
    # cap on ?wait= (API: at most 60); lower it behind a proxy with a shorter read timeout
    long_poll_max: float = Field(default=60, ge=0, le=60)
    # seconds an event stays in GET /v1/events (an older `after`: 410); the sweep removes it
    event_retention: int = Field(default=30 * 24 * 3600, gt=0)
    # seconds an Idempotency-Key is remembered; and the lease a first request holds on its
    # key while it runs, renewed as it goes, so a killed process frees the key soon after
    idempotency_ttl: int = Field(default=24 * 3600, gt=0)
    idempotency_lease: int = Field(default=30, gt=0)
    log_level: str = "INFO"
    log_format: Literal["json", "text"] = "json"
    # seconds in-flight requests (API) and jobs (worker) get to finish after SIGTERM
    shutdown_grace: int = Field(default=30, ge=0)
    # Each worker serves /metrics on the first free port of
    # [worker_metrics_port, worker_metrics_port + worker_metrics_ports): N workers on one host
    # with the same settings each get their own port (Prometheus scrapes the range). A worker
    # that finds none free runs without metrics rather than not at all. Port 0: off.
    worker_metrics_port: int = Field(default=9640, ge=0, le=65535)
    worker_metrics_ports: int = Field(default=16, ge=1, le=1024)
    worker_metrics_host: str = "0.0.0.0"
    # Separate queues let several deployments (or test runs) share one Redis.
    queue_name: str = "stowage:queue"
    # Previews of PDFs and videos (app.media.previews): a PDF with more pages, a video or audio
    # file lasting longer (seconds), or a preview decoding longer (seconds) fails with
    # too_many_pages / too_long / preview_timeout when its profile has derivatives.
    preview_max_pages: int = Field(default=10_000, gt=0)
    preview_max_duration: float = Field(default=4 * 3600, gt=0)
    preview_timeout: float = Field(default=30, gt=0)
    # quotas (issue 24): how long the bytes an upload in progress holds against its app's
    # quota count when its process dies before it is recorded or refused (tus: tus_expiry)
    quota_reservation_ttl: int = Field(default=3600, gt=0)
    # rate limits (issue 24): the window of `--rate-limit N` (N uploads per this many seconds)
    rate_limit_window: int = Field(default=60, gt=0)
    # /metrics: usage gauges per app (label app=<id>) for at most this many apps; beyond,
    # the largest ones and app="_other" (bounded label cardinality)
    metrics_max_apps: int = Field(default=50, ge=1, le=10_000)

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, v: str) -> str:
        if not v.startswith(("postgresql://", "postgres://")):
            raise ValueError("must be a postgresql:// URL")
        return v

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, v: str) -> str:
        if not v.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must be a redis:// URL")
        return v

    @field_validator("cache_url", "store_url", "quarantine_url")
    @classmethod
    def _check_storage_url(cls, v: str) -> str:
        if v:  # the quarantine may be left out
            StorageURL.parse(v)  # ValueError says what is wrong
        return v

    @field_validator("clamd_url")
    @classmethod
    def _check_clamd_url(cls, v: str) -> str:
        if v:
            parse_clamd_url(v)  # ValueError says what is wrong
        return v

    def storage_url(self, role: Literal["cache", "store", "quarantine"]) -> StorageURL:
        """The cache's, the store's or the quarantine's URL, parsed (it was checked when the
        settings loaded; the quarantine's is set)."""
        return StorageURL.parse({"cache": self.cache_url, "store": self.store_url,
                                 "quarantine": self.quarantine_url}[role])

    @field_validator("public_url", "s3_endpoint_url", "s3_public_endpoint_url")
    @classmethod
    def _check_http_url(cls, v: str | None) -> str | None:
        if v is None:
            return v
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an absolute http:// or https:// URL")
        return v

    @field_validator("secret_key")
    @classmethod
    def _check_secret_key(cls, v: str) -> str:
        if v and len(v.encode()) < MIN_SECRET_KEY_BYTES:
            raise ValueError(f"must be at least {MIN_SECRET_KEY_BYTES} bytes (e.g. the output of"
                             " `openssl rand -hex 32`)")
        return v

    @field_validator("cors_origins")
    @classmethod
    def _check_cors_origins(cls, v: str) -> str:
        for origin in (o.strip() for o in v.split(",")):
            if not origin or origin == "*":
                continue
            try:
                parts = urlsplit(origin)
                parts.port  # noqa: B018 (raises on a bad port)
            except ValueError:
                parts = None
            # a browser sends its origin without a path or a trailing slash, and it must
            # match exactly: "https://app.example/" would silently never match
            if (parts is None or parts.scheme not in ("http", "https") or not parts.hostname
                    or parts.path or parts.query or parts.fragment or "@" in parts.netloc):
                raise ValueError(f"{origin!r} is not an origin: write scheme://host[:port],"
                                 " no path or trailing slash (or * for any)")
        return v

    @field_validator("webhook_retry_delays")
    @classmethod
    def _check_delays(cls, v: str) -> str:
        try:
            delays = [int(x) for x in v.split(",") if x.strip()]
        except ValueError:
            raise ValueError("must be comma-separated whole seconds") from None
        if not delays or any(d < 0 for d in delays):
            raise ValueError("must list at least one non-negative delay")
        return v

    @field_validator("profiles_file")
    @classmethod
    def _check_profiles_file(cls, v: Path | None) -> Path | None:
        if v is not None and not v.is_file():
            raise ValueError(f"no such file: {v}")
        return v

    @cached_property
    def retry_delays(self) -> list[int]:
        return [int(x) for x in self.webhook_retry_delays.split(",") if x.strip()]

    @cached_property
    def signing_key(self) -> bytes:
        # dev runs without a configured key; links then stop working on restart, which is
        # why `stowage dev` warns about it.
        return (self.secret_key or _EPHEMERAL_KEY).encode()


_EPHEMERAL_KEY = secrets.token_urlsafe(32)


# STOWAGE_* variables read elsewhere than Settings (or by the tests and benchmarks)
OTHER_VARIABLES = {"STOWAGE_MIGRATIONS_DIR", "STOWAGE_FAILPOINTS", "STOWAGE_SOAK_SECONDS",
                   "STOWAGE_SUPERVISOR_PID"}


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """A warning for each STOWAGE_* variable no setting reads (a misspelt one is otherwise
    ignored, silently), with the closest known name."""
    prefix = str(Settings.model_config.get("env_prefix", "STOWAGE_"))
    known = {prefix + name.upper() for name in Settings.model_fields} | OTHER_VARIABLES
    out = []
    for name in sorted(environ):
        if not name.startswith(prefix) or name in known or name.startswith(prefix + "TEST_"):
            continue
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.7)
        out.append(f"{name} is not a setting; it is ignored"
                   + (f" (did you mean {close[0]}?)" if close else ""))
    return out


class ConfigError(Exception):
    """Settings could not be loaded; the message names the variable."""


def load_settings(**overrides: object) -> Settings:
    from pydantic import ValidationError

    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as e:
        lines = []
        for err in e.errors():
            name = "STOWAGE_" + "_".join(str(p) for p in err["loc"]).upper()
            lines.append(f"{name}: {err['msg']}")
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines)) from None
