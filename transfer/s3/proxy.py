"""Which proxy a request goes through: `HTTPS_PROXY`, `HTTP_PROXY`, `NO_PROXY`.

Read once, when the daemon's S3 client is built (docs/design.md,
Configuration), with the same rules curl applies, so that an operator's
environment means the same for the daemon as for `curl` and `aws`:
- `https_proxy`/`HTTPS_PROXY` for https URLs, `http_proxy`/`HTTP_PROXY` for
  http ones (the lower-case name wins when both are set); a proxy URL
  without a scheme is `http://`; user:password in it becomes
  `Proxy-Authorization: Basic`.
- `no_proxy`/`NO_PROXY`: comma-separated; `*` bypasses every host; a name
  matches itself and its subdomains (a leading dot is ignored: `.example.com`
  and `example.com` both match `s3.example.com`); an IP address matches
  itself, a CIDR block (`10.0.0.0/8`) every address in it. Ports in entries
  are ignored; names compare case-insensitively.

Through an http proxy, an https request opens a CONNECT tunnel and TLS runs
inside it (end to end with S3, verified against the CA bundle); an http
request is sent to the proxy in absolute form (transfer/s3/pool.py).
"""

from __future__ import annotations

import base64
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit


@dataclass(frozen=True)
class Proxy:
    host: str
    port: int
    authorization: str | None = None  # the Proxy-Authorization header value

    def __repr__(self) -> str:  # never the credentials
        return f"Proxy({self.host}:{self.port})"


@dataclass(frozen=True)
class Proxies:
    https: Proxy | None = None
    http: Proxy | None = None
    no_proxy: tuple[str, ...] = ()

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Proxies:
        def get(name: str) -> str:
            return (environ.get(name.lower()) or environ.get(name.upper()) or "").strip()

        entries = tuple(e.strip().lower() for e in get("no_proxy").split(",") if e.strip())
        return cls(
            _parse("HTTPS_PROXY", get("https_proxy")),
            _parse("HTTP_PROXY", get("http_proxy")),
            entries,
        )

    def for_url(self, scheme: str, host: str) -> Proxy | None:
        """The proxy for a request to `host` over `scheme`, or None: direct."""
        proxy = self.https if scheme == "https" else self.http
        if proxy is None or bypass(host, self.no_proxy):
            return None
        return proxy


def bypass(host: str, entries: tuple[str, ...]) -> bool:
    """Whether NO_PROXY's `entries` exempt `host` (curl's matching)."""
    host = host.lower().strip("[]").rstrip(".")
    try:
        address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(host)
    except ValueError:
        address = None
    for entry in entries:
        if entry == "*":
            return True
        if entry.startswith("[") and "]" in entry:
            entry = entry[1 : entry.index("]")]  # [::1]:443 -> ::1
        elif entry.count(":") == 1:
            entry = entry.partition(":")[0]  # name:port -> name
        entry = entry.lstrip(".").rstrip(".")
        if not entry:
            continue
        if address is not None:
            try:
                if address in ipaddress.ip_network(entry, strict=False):
                    return True
            except ValueError:
                pass
            continue
        if host == entry or host.endswith("." + entry):
            return True
    return False


def _parse(name: str, value: str) -> Proxy | None:
    if not value:
        return None
    if "://" not in value:
        value = "http://" + value
    parts = urlsplit(value)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(
            f"{name}: a {parts.scheme}:// proxy is not supported, only http:// (CONNECT for https)"
        )
    auth = None
    if parts.username is not None:
        pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        auth = "Basic " + base64.b64encode(pair.encode()).decode()
    return Proxy(parts.hostname, parts.port or 80, auth)
