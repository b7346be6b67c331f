"""aiobotocore clients that sign every request with a role session's current credentials.

botocore's own refreshable credentials decide themselves when to refresh
(15 minutes before expiry, mandatory at 10), which makes a 900 s session
refresh on every request and ignores our schedule. Instead, the object
below asks the job's `CredentialSource` at every signing: the session's
refresher keeps those credentials fresh, so one long-lived client keeps
working across any number of refreshes, and a request signed after a hard
expiry fails with CredentialsExpired (raised from `current()`) instead of
being sent with dead credentials.

Design note (concurrency): `get_frozen_credentials` runs in the task that
sends the request, awaits `source.current()` (which returns at once unless
the credentials have expired and a refresh is in flight), and holds no lock;
cancelling the request cancels only that wait. No secret is kept on this
object: botocore's synchronous `access_key`/`secret_key`/`token` attributes
stay empty, only the frozen tuple handed to the signer carries them.
"""

from __future__ import annotations

from typing import Any

from aiobotocore.credentials import AioCredentialResolver, AioCredentials
from aiobotocore.session import AioSession
from botocore.credentials import CredentialProvider, ReadOnlyCredentials

from s3feed.auth.credentials import Credentials, CredentialSource

METHOD = "s3feed-role-session"


class RoleSessionCredentials(AioCredentials):  # type: ignore[misc]
    def __init__(self, source: CredentialSource) -> None:
        super().__init__(access_key="", secret_key="", token=None, method=METHOD)
        self._source = source

    async def get_frozen_credentials(self) -> Any:
        return frozen(await self._source.current())

    def __repr__(self) -> str:
        return f"RoleSessionCredentials({self._source!r})"


class _Provider(CredentialProvider):  # type: ignore[misc]
    METHOD = METHOD

    def __init__(self, credentials: RoleSessionCredentials) -> None:
        super().__init__()
        self._credentials = credentials

    async def load(self) -> RoleSessionCredentials:
        return self._credentials


def frozen(creds: Credentials) -> ReadOnlyCredentials:
    """botocore's signer input for our credentials."""
    return ReadOnlyCredentials(creds.access_key_id, creds.secret_access_key, creds.session_token)


def aio_session_for(source: CredentialSource, *, data_loader: Any = None) -> AioSession:
    """An AioSession whose clients sign with `source`'s current credentials.

    session = aio_session_for(role_session)
    async with session.create_client("s3", region_name=..., endpoint_url=...) as s3:
        ...

    Pass one shared `data_loader` (`AioSession().get_component("data_loader")`)
    to make per-job sessions cheap: service models are then parsed once.
    """
    session = AioSession()
    if data_loader is not None:
        session.register_component("data_loader", data_loader)
    resolver = AioCredentialResolver([_Provider(RoleSessionCredentials(source))])
    session.register_component("credential_provider", resolver)
    return session
