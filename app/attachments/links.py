"""Signed, expiring download links: they work without the API key, so a browser can load a
file from an <img> tag; a tampered or expired link is refused (403)."""

from __future__ import annotations

from uuid import UUID

from itsdangerous import BadSignature, SignatureExpired, TimestampSigner

from app.errors import Forbidden


def _subject(att_id: UUID, derivative: str | None) -> str:
    return f"{att_id}/{derivative or ''}"


class Links:
    """The token is ``<timestamp>.<signature>`` over the attachment id and derivative name.
    Those are in the link's path already, so the token does not carry them (nor JSON, nor
    the zlib attempt of itsdangerous' serializers: two links are signed on every upload)."""

    def __init__(self, public_url: str, secret: bytes, ttl: int) -> None:
        self.base = public_url.rstrip("/")
        self.ttl = ttl
        self._signer = TimestampSigner(secret, salt="stowage.download", sep=".")

    def _token(self, att_id: UUID, derivative: str | None) -> str:
        subject = _subject(att_id, derivative)
        return self._signer.sign(subject).decode()[len(subject) + 1:]

    def content_url(self, att_id: UUID) -> str:
        return f"{self.base}/v1/attachments/{att_id}/content?token={self._token(att_id, None)}"

    def derivative_url(self, att_id: UUID, name: str) -> str:
        token = self._token(att_id, name)
        return f"{self.base}/v1/attachments/{att_id}/derivatives/{name}?token={token}"

    def verify(self, token: str, att_id: UUID, derivative: str | None = None) -> None:
        signed = f"{_subject(att_id, derivative)}.{token}"
        try:
            self._signer.unsign(signed, max_age=self.ttl)
        except SignatureExpired:
            raise Forbidden("this download link has expired; fetch the attachment for a new"
                            " one") from None
        except (BadSignature, ValueError, TypeError):
            # a token signed for another file lands here too: its signature does not match
            raise Forbidden("this download link is not valid for this file") from None
