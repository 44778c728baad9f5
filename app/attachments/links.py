"""Signed, expiring download links: they work without the API key, so a browser can load a
file from an <img> tag; a tampered or expired link is refused (403).

A link carries its own expiry, signed: whichever API instance receives it honours what the
issuing one promised, whatever its own STOWAGE_DOWNLOAD_URL_TTL (a TTL checked on receipt
would cut a link short, or stretch it, on an instance configured differently)."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from uuid import UUID

from itsdangerous import Signer
from itsdangerous.encoding import base64_decode, base64_encode, bytes_to_int, int_to_bytes

from app.errors import Forbidden

# Another salt than the links that carried their signing time ("stowage.download", checked
# against the receiving instance's TTL): those no longer verify, so they fail closed (403).
SALT = "stowage.download.expires"


def link_expiry(now: float, ttl: int) -> int:
    """The Unix time at which a link signed at ``now`` for ``ttl`` seconds stops working:
    the one place that decides it. Rounded up to the end of the next window of ``ttl``
    seconds, so that every read of an attachment within a window yields the same link
    (browsers and CDNs can cache what it serves), and a link works for at least ``ttl`` and
    at most ``2 * ttl`` seconds."""
    return (int(now) // ttl + 2) * ttl


def _subject(att_id: UUID, derivative: str | None, version: int | None = None) -> str:
    # a derivative's link names its generation: rebuilt by a reprocess, it gets a new link,
    # so a cache never serves the old image under it
    base = f"{att_id}/{derivative or ''}"
    return base if version is None else f"{base}@{version}"


class Links:
    """The token is ``<expiry>.<signature>``: the expiry in itsdangerous' compact integer
    encoding, the signature over the attachment id, the derivative name and the expiry. The
    id and the name are in the link's path already, so the token does not carry them."""

    def __init__(self, public_url: str, secret: bytes, ttl: int, *, event_ttl: int = 0,
                 clock: Callable[[], float] = time.time,
                 public_profiles: frozenset[str] = frozenset()) -> None:
        self.base = public_url.rstrip("/")
        # profiles whose attachments have unsigned, immutable links
        self.public_profiles = public_profiles
        self.ttl = ttl
        self.event_ttl = max(event_ttl, ttl)
        self.clock = clock
        self._signer = Signer(secret, salt=SALT, sep=".")

    def for_events(self) -> Links:
        """The links to put in a webhook event: signed for ``event_ttl``, so that they still
        work when the event's last retry arrives. An event's body is written once and sent
        as is on every attempt (and is what an event feed would return), so its links cannot
        be signed anew per attempt."""
        links = copy.copy(self)  # shares the signer
        links.ttl = self.event_ttl
        return links

    def _token(self, att_id: UUID, derivative: str | None, version: int | None = None) -> str:
        expires = base64_encode(int_to_bytes(link_expiry(self.clock(), self.ttl))).decode()
        signature = self._signer.get_signature(
            f"{_subject(att_id, derivative, version)}.{expires}")
        return f"{expires}.{signature.decode()}"

    def content_url(self, att_id: UUID, *, public: bool = False) -> str:
        """A public profile's files are served to anyone who has the link, for as long as
        the attachment lives: no token, nothing expires, caches keep it for good (an
        attachment's original never changes)."""
        url = f"{self.base}/v1/attachments/{att_id}/content"
        return url if public else f"{url}?token={self._token(att_id, None)}"

    def derivative_url(self, att_id: UUID, name: str, version: int | None = None, *,
                       public: bool = False) -> str:
        url = f"{self.base}/v1/attachments/{att_id}/derivatives/{name}"
        query = [] if version is None else [f"v={version}"]
        if not public:
            query.append(f"token={self._token(att_id, name, version)}")
        return f"{url}?{'&'.join(query)}" if query else url

    def image_url(self, att_id: UUID, params: str, query: str) -> str:
        """A signed link to an image variant: `params` are the normalised parameters it is
        signed for, `query` the same as a query string."""
        return (f"{self.base}/v1/attachments/{att_id}/image?{query}"
                f"&token={self._token(att_id, 'image:' + params)}")

    def expires_at(self, token: str) -> int | None:
        """The expiry a token carries (unverified: call verify first)."""
        try:
            return bytes_to_int(base64_decode(token.partition(".")[0]))
        except Exception:
            return None

    def verify(self, token: str, att_id: UUID, derivative: str | None = None,
               version: int | None = None) -> None:
        expires, _, signature = token.partition(".")
        # a token signed for another file lands here too: its signature does not match
        if not self._signer.verify_signature(
                f"{_subject(att_id, derivative, version)}.{expires}", signature):
            raise Forbidden("this download link is not valid for this file")
        if int(self.clock()) > bytes_to_int(base64_decode(expires)):
            raise Forbidden("this download link has expired; fetch the attachment for a new"
                            " one")
