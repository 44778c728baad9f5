"""The operator's login: one token (STOWAGE_ADMIN_TOKEN), a signed session cookie, and a
per-session CSRF token. Free of FastAPI: routes.py puts it on the wire.

The session is stateless (a signed, timestamped cookie) and its signing key is derived from the
admin token, so that:
- rotating the admin token logs every session out;
- several API processes, and restarts, accept each other's sessions without shared storage
  (STOWAGE_SECRET_KEY, mixed in when set, must then be the same everywhere, as it already must
  for download links).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Any

from itsdangerous import BadSignature, URLSafeTimedSerializer

COOKIE = "stowage_dashboard"
FLASH_COOKIE = "stowage_dashboard_flash"
COOKIE_PATH = "/dashboard"
SESSION_TTL_S = 12 * 3600
FLASH_TTL_S = 60


def admin_token(settings: Any) -> str:
    """The configured token; "" turns the dashboard off. getattr: the setting is optional."""
    return settings.admin_token.strip()


def is_secure(settings: Any) -> bool:
    """Cookies get the Secure flag when the service is served over https."""
    return str(getattr(settings, "public_url", "")).lower().startswith("https://")


@dataclass(frozen=True)
class Session:
    csrf: str


class Sessions:
    def __init__(self, settings: Any) -> None:
        self._token = admin_token(settings).encode()
        key = hmac.new(self._token, b"stowage.dashboard.session\x00"
                       + (getattr(settings, "secret_key", "") or "").encode(),
                       hashlib.sha256).digest()
        self._sessions = URLSafeTimedSerializer(key, salt="stowage.dashboard.session")
        self._flash = URLSafeTimedSerializer(key, salt="stowage.dashboard.flash")

    @property
    def enabled(self) -> bool:
        return bool(self._token)

    def token_matches(self, candidate: str) -> bool:
        """Constant time, so the answer's timing says nothing about how much was right."""
        if not self._token:
            return False
        return hmac.compare_digest(candidate.strip().encode(), self._token)

    def issue(self) -> tuple[str, Session]:
        """A new session (fresh CSRF token) and its cookie value."""
        session = Session(csrf=secrets.token_urlsafe(32))
        return self._sessions.dumps({"csrf": session.csrf}), session

    def load(self, cookie: str | None) -> Session | None:
        if not cookie or not self._token:
            return None
        try:
            data = self._sessions.loads(cookie, max_age=SESSION_TTL_S)
        except BadSignature:  # SignatureExpired is one too
            return None
        csrf = data.get("csrf") if isinstance(data, dict) else None
        return Session(csrf=csrf) if isinstance(csrf, str) and csrf else None

    @staticmethod
    def csrf_matches(session: Session, submitted: str | None) -> bool:
        if not submitted:
            return False
        return hmac.compare_digest(submitted.encode(), session.csrf.encode())

    def flash(self, level: str, message: str) -> str:
        """A one-shot message for the next page (after a POST's redirect), signed so that
        nobody can make the dashboard display words of their choosing."""
        return self._flash.dumps([level, message])

    def read_flash(self, cookie: str | None) -> tuple[str, str] | None:
        if not cookie:
            return None
        try:
            level, message = self._flash.loads(cookie, max_age=FLASH_TTL_S)
        except (BadSignature, ValueError, TypeError):
            return None
        return str(level), str(message)
