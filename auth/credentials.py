"""Credentials of one role session, and the seam transfer/ signs through.

`Credentials` never shows its secret or token in repr/str, so an accidental
log line or exception message cannot leak them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol


@dataclass(frozen=True)
class Credentials:
    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)
    expiration: datetime | None = None  # timezone-aware UTC; None = never expires

    def __str__(self) -> str:
        return f"Credentials(access_key_id={self.access_key_id!r}, expiration={self.expiration})"


class CredentialSource(Protocol):
    """What a signer needs: the job's current credentials, and a way to force
    a refresh when S3 says ExpiredToken."""

    async def current(self) -> Credentials:
        """Valid credentials now; raises CredentialsExpired when the session lapsed."""
        ...

    async def refresh_now(self, reason: str) -> Credentials:
        """Refresh at once (single flight with any refresh already running)."""
        ...
