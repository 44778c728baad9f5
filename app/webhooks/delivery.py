"""One HTTP attempt of a webhook: SSRF guard, Standard Webhooks signature, capped response."""

from __future__ import annotations

import asyncio
import concurrent.futures
import ipaddress
import json
import socket
import ssl
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
from standardwebhooks import Webhook

from app.failpoints import failpoint_blocking

MAX_RESPONSE_BYTES = 16 * 1024
USER_AGENT = "Stowage-Webhooks/1"


class BlockedDestination(Exception):
    """The URL resolves to an address webhooks may not reach (permanent: it never will, as
    configured), or does not resolve now (worth another try later)."""

    def __init__(self, message: str, *, permanent: bool) -> None:
        super().__init__(message)
        self.permanent = permanent


@dataclass
class AttemptResult:
    status_code: int | None
    error: str | None
    duration_ms: int
    response_body: str | None
    retry_after_s: float | None = None
    # can never succeed as configured (a refused address, a URL no client can use, a
    # certificate for another name): failed at once, not retried for a day
    permanent: bool = False

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


# RFC 6052's well-known NAT64 prefix: the last 32 bits are the IPv4 address a NAT64 gateway on
# the path connects to. Its local-use sibling (RFC 8215) is an operator's own translator, and
# where it puts the IPv4 address depends on the operator's prefix length: never allowed.
NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")


def is_forbidden_address(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """True unless ``ip`` is globally routable. An IPv6 address that carries an IPv4 one
    (IPv4-mapped, NAT64, 6to4, Teredo) is judged by that IPv4 address as well, since the host
    or a relay on the way turns it into IPv4 traffic to that address: 2002:a9fe:a9fe:: reaches
    169.254.169.254 wherever a 6to4 relay answers."""
    if isinstance(ip, ipaddress.IPv6Address):
        v4 = ip.ipv4_mapped
        if v4 is None and ip in NAT64:
            v4 = ipaddress.IPv4Address(int(ip) & 0xFFFF_FFFF)
        if v4 is not None:  # these stand for the IPv4 address and nothing else
            return is_forbidden_address(v4)
        if ip in NAT64_LOCAL or ip.is_site_local:  # site-local: deprecated, never global
            return True
        embedded = [ip.sixtofour] if ip.sixtofour else list(ip.teredo or ())
        if any(is_forbidden_address(a) for a in embedded):
            return True
    # is_global leaves out 100.64.0.0/10 (carrier-grade NAT) and the other special-purpose
    # ranges; it still counts multicast and (IPv6) unassigned space as global, which a
    # webhook has no business reaching either.
    return not ip.is_global or ip.is_multicast or ip.is_reserved


# Name lookups of webhook hosts run in threads of their own. asyncio's getaddrinfo uses the
# loop's default executor, which the storage's file work shares: a tenant's endpoint whose
# name never resolves (each lookup blocking for the resolver's whole timeout) once filled it
# and stalled every promotion. Here at most this many lookups block at a time, and each is
# waited for at most webhook_dns_timeout; a lookup still running past that keeps its thread
# until the resolver gives up, but no other work waits behind it.
_RESOLVER = concurrent.futures.ThreadPoolExecutor(max_workers=4,
                                                  thread_name_prefix="webhook-dns")


def _lookup(host: str, port: int) -> list[Any]:
    failpoint_blocking("webhook.resolve")  # a resolver that hangs, for the isolation tests
    return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)


async def resolve_public(host: str, port: int, allow_private: bool,
                         timeout_s: float = 5.0) -> str:
    """An address to connect to; refuses private ones unless allowed. We connect to this very
    address afterwards, so a DNS answer that changes between check and use (rebinding) does
    not get past the check."""
    lookup = asyncio.get_running_loop().run_in_executor(_RESOLVER, _lookup, host, port)
    try:
        infos = await asyncio.wait_for(lookup, timeout_s)
    except socket.gaierror as e:
        raise BlockedDestination(f"cannot resolve {host}: {e}", permanent=False) from None
    except TimeoutError:
        raise BlockedDestination(f"cannot resolve {host}: no answer within {timeout_s:g} s",
                                 permanent=False) from None
    addresses = [ipaddress.ip_address(info[4][0]) for info in infos]
    if not allow_private:
        bad = [str(a) for a in addresses if is_forbidden_address(a)]
        if bad:
            raise BlockedDestination(
                f"{host} resolves to an address that is not globally routable (private,"
                f" loopback, link-local, shared, multicast…: {', '.join(bad)});"
                " set STOWAGE_WEBHOOK_ALLOW_PRIVATE=true to allow it", permanent=True
            )
    return str(addresses[0])


def encode_body(body: dict[str, Any]) -> str:
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False)


def signed_headers(secret: str, msg_id: str, payload: str, now: datetime,
                   previous_secret: str | None = None) -> dict[str, str]:
    # standardwebhooks wants an aware UTC datetime and the exact text that is sent
    signatures = [Webhook(secret).sign(msg_id, now, payload)]
    if previous_secret:
        # after a rotation, during the overlap: Standard Webhooks allows several signatures,
        # space-separated, and a receiver accepts the delivery if any verifies, so one still
        # holding the old secret and one holding the new both do
        signatures.append(Webhook(previous_secret).sign(msg_id, now, payload))
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": " ".join(signatures),
        "content-type": "application/json",
        "user-agent": USER_AGENT,
    }


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    if value.strip().isdigit():
        return float(value.strip())
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max((when - datetime.now(UTC)).total_seconds(), 0.0)


async def attempt(http: httpx.AsyncClient, *, url: str, secret: str, msg_id: str,
                  body: dict[str, Any], allow_private: bool, timeout_s: float,
                  dns_timeout_s: float = 5.0, previous_secret: str | None = None
                  ) -> AttemptResult:
    started = time.monotonic()

    def elapsed() -> int:
        return int((time.monotonic() - started) * 1000)

    payload = encode_body(body)
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        ip = await resolve_public(host, port, allow_private, dns_timeout_s)
    except BlockedDestination as e:
        return AttemptResult(None, str(e), elapsed(), None, permanent=e.permanent)
    netloc_ip = f"[{ip}]" if ":" in ip else ip
    target = urlunsplit(parts._replace(netloc=f"{netloc_ip}:{port}"))
    headers = signed_headers(secret, msg_id, payload, datetime.now(UTC), previous_secret)
    headers["host"] = parts.netloc.rsplit("@", 1)[-1]
    try:
        async with http.stream(
            "POST", target, content=payload.encode(), headers=headers, timeout=timeout_s,
            extensions={"sni_hostname": host} if parts.scheme == "https" else {},
        ) as resp:
            chunks, size = [], 0
            async for chunk in resp.aiter_bytes():
                chunks.append(chunk)
                size += len(chunk)
                if size >= MAX_RESPONSE_BYTES:
                    break  # a receiver's answer is a log line, not a download
            text = b"".join(chunks)[:MAX_RESPONSE_BYTES].decode("utf-8", "replace")
            return AttemptResult(resp.status_code, None if resp.is_success else
                                 f"HTTP {resp.status_code}", elapsed(), text,
                                 _retry_after(resp.headers.get("retry-after")))
    except httpx.TimeoutException:
        return AttemptResult(None, f"no answer within {timeout_s:g} s", elapsed(), None)
    except (httpx.UnsupportedProtocol, httpx.InvalidURL) as e:
        return AttemptResult(None, f"the URL can never be delivered to: {e}"[:500], elapsed(),
                             None, permanent=True)
    except httpx.HTTPError as e:
        cert = _certificate_error(e)
        if cert is not None:  # the receiver's certificate does not fit its name: fix, not wait
            return AttemptResult(None, f"TLS: {cert}"[:500], elapsed(), None, permanent=True)
        return AttemptResult(None, f"{type(e).__name__}: {e}"[:500], elapsed(), None)


def _certificate_error(exc: BaseException) -> ssl.SSLCertVerificationError | None:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, ssl.SSLCertVerificationError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None
