"""Signed, expiring download links: they work without the API key, so a browser can load a
file from an <img> tag; a tampered or expired link is refused (403)."""

from __future__ import annotations

from uuid import UUID

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

from app.errors import Forbidden


class Links:
    def __init__(self, public_url: str, secret: bytes, ttl: int) -> None:
        self.base = public_url.rstrip("/")
        self.ttl = ttl
        self._serializer = URLSafeTimedSerializer(secret, salt="stowage.download")

    def _token(self, att_id: UUID, derivative: str | None) -> str:
        return self._serializer.dumps([str(att_id), derivative or ""])

    def content_url(self, att_id: UUID) -> str:
        return f"{self.base}/v1/attachments/{att_id}/content?token={self._token(att_id, None)}"

    def derivative_url(self, att_id: UUID, name: str) -> str:
        token = self._token(att_id, name)
        return f"{self.base}/v1/attachments/{att_id}/derivatives/{name}?token={token}"

    def verify(self, token: str, att_id: UUID, derivative: str | None = None) -> None:
        try:
            signed_id, signed_name = self._serializer.loads(token, max_age=self.ttl)
        except SignatureExpired:
            raise Forbidden("this download link has expired; fetch the attachment for a new"
                            " one") from None
        except (BadSignature, ValueError, TypeError):
            raise Forbidden("this download link is not valid") from None
        if signed_id != str(att_id) or signed_name != (derivative or ""):
            raise Forbidden("this download link is for another file")
