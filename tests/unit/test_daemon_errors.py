"""daemon/errors.py: auth/ and transfer/ errors through the one status table."""

from __future__ import annotations

from s3feed.auth.stserrors import policy_refused
from s3feed.daemon.errors import STATUS_BY_CODE, describe


def test_a_refused_session_policy_is_a_400_with_its_own_code() -> None:
    exc = policy_refused("PackedPolicyTooLarge", "Packed policy consumes 120% ...", 1900)
    status, code, message, headers = describe(exc)
    assert (status, code, headers) == (400, "SessionPolicyTooLarge", {})
    assert message == exc.message and "shorter folder" in message
    assert STATUS_BY_CODE["SessionPolicyTooLarge"] == 400
