"""A role session's states and the status a job document shows of it.

The state is an enum whose transitions `ALLOWED` lists (auth/session.py
checks every move): ACTIVE while the session holds credentials that have not
run out, EXPIRED while it holds none that work (they ran out with no
successful refresh, or a session restored at start has not been assumed
yet); a successful AssumeRole makes an EXPIRED session ACTIVE again
(docs/design.md, Credentials). Both end CLOSED. `SessionStatus` is a frozen
snapshot that never holds a secret.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from typing import Any


class SessionState(enum.Enum):
    ACTIVE = "active"
    EXPIRED = "expired"  # no working credentials; the refresher keeps trying (not AccessDenied)
    CLOSED = "closed"


ALLOWED = {
    SessionState.ACTIVE: {SessionState.EXPIRED, SessionState.CLOSED},
    SessionState.EXPIRED: {SessionState.ACTIVE, SessionState.CLOSED},
    SessionState.CLOSED: set[SessionState](),
}


@dataclass(frozen=True)
class SessionStatus:
    """What a job document shows about its session. Never a secret."""

    role_arn: str
    session_name: str
    expires_at: datetime | None
    granted_duration_seconds: int
    refreshes: int
    last_refresh_error: str | None
    warnings: tuple[str, ...]
    expired: bool
    next_refresh_at: datetime | None = None
    policy: dict[str, Any] | None = None  # the inline session policy sent to STS
