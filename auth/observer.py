"""Observer protocol through which auth/ reports to metrics (daemon/metrics.py)."""

from __future__ import annotations

from datetime import datetime
from typing import Protocol


class CredentialObserver(Protocol):
    def assume_role(self) -> None:
        """Every AssumeRole call, refreshes included."""

    def assume_role_failed(self, code: str) -> None:
        """An AssumeRole call failed; code is STS's error code or our own (e.g. 'NetworkError')."""

    def refreshed(self, at: datetime) -> None:
        """A background/forced refresh succeeded."""

    def refresh_failed(self, code: str) -> None:
        """A refresh attempt failed."""

    def expiry_changed(self, session_id: str, expires_at: datetime | None) -> None:
        """A session's credentials now expire at expires_at; None = session closed."""


class NullCredentialObserver:
    def assume_role(self) -> None:
        pass

    def assume_role_failed(self, code: str) -> None:
        pass

    def refreshed(self, at: datetime) -> None:
        pass

    def refresh_failed(self, code: str) -> None:
        pass

    def expiry_changed(self, session_id: str, expires_at: datetime | None) -> None:
        pass
