"""HTTPS like real S3: a SeaweedFS of this module's own serving S3 and STS over
TLS (`-s3.port.https`) with a certificate from a throwaway CA made here.

The CA bundle is honoured on every plane ([s3] ca_bundle or AWS_CA_BUNDLE for
HEAD, LIST and ranged GET through the daemon's one S3 client; [sts] ca_bundle
for AssumeRole); a CA that did not sign the server's certificate fails at
once with an error naming the setting; a small CONNECT proxy on 127.0.0.1
proves HTTPS_PROXY carries both planes, TLS end to end inside the tunnel, and
NO_PROXY bypasses it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from test_s3_live import Buffer, Recorder, StaticSource, sts_creds

import localaws
from localaws import iam, processes, servers
from s3feed.auth.config import StsConfig
from s3feed.auth.errors import StsUnavailable
from s3feed.auth.sts import AioStsClient
from s3feed.transfer.config import S3Config
from s3feed.transfer.errors import S3Unavailable
from s3feed.transfer.s3.client import S3Client
from s3feed.transfer.s3.objects import S3ObjectStore
from s3feed.transfer.uri import parse_uri_path

if TYPE_CHECKING:
    from aiobotocore.session import AioSession

pytestmark = pytest.mark.timeout(180)
HOST = "127.0.0.1"


@dataclass(frozen=True)
class Pki:
    ca: Path  # the CA that signed the server's certificate
    stranger: Path  # a CA that did not
    cert: Path
    key: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make the test CA")
    d = tmp_path_factory.mktemp("pki")
    for name in ("ca", "stranger"):
        _openssl(
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.pem",
            "-days",
            "1",
            "-subj",
            f"/CN=s3feed test {name}",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            cwd=d,
        )
    (d / "server.ext").write_text(
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"
    )
    _openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
        cwd=d,
    )
    _openssl(
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "1",
        "-extfile",
        "server.ext",
        cwd=d,
    )
    return Pki(d / "ca.pem", d / "stranger.pem", d / "server.pem", d / "server.key")


@dataclass(frozen=True)
class TlsSeaweed:
    https_url: str
    http_url: str
    keys: dict[str, str]
    role_arn: str
    bucket: str
    region: str


@pytest.fixture(scope="module")
def tls_seaweed(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsSeaweed]:
    paths = localaws.Paths()
    if not paths.weed_bin.exists():
        pytest.skip("SeaweedFS is not installed: scripts/local_aws.py install")
    keys = iam.seaweed_config(paths)
    ids_path, iam_path = iam.write_seaweed_configs(paths, keys)
    data = tmp_path_factory.mktemp("weed")
    taken: set[int] = set()
    ports = {
        n: processes.free_port_pair(taken)
        for n in ("s3", "https", "master", "volume", "filer", "admin")
    }
    cmd = [
        str(paths.weed_bin),
        "mini",
        f"-dir={data}",
        f"-ip={HOST}",
        f"-ip.bind={HOST}",
        f"-s3.config={ids_path}",
        f"-s3.iam.config={iam_path}",
        "-master.telemetry=false",
        "-admin.ui=false",
        "-webdav=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-s3.port={ports['s3']}",
        f"-s3.port.https={ports['https']}",
        f"-s3.cert.file={pki.cert}",
        f"-s3.key.file={pki.key}",
        f"-master.port={ports['master']}",
        f"-volume.port={ports['volume']}",
        f"-filer.port={ports['filer']}",
        f"-admin.port={ports['admin']}",
        f"-s3.localSocket={data / 's3.sock'}",
        f"-filer.localSocket={data / 'filer.sock'}",
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    log = data / "weed.log"
    pid = processes.spawn(cmd, env, log, data)
    try:
        processes.wait_until(
            "tls seaweed",
            lambda: localaws.find_s3_port(pid, ports["s3"], keys) is not None,
            pid,
            log,
            iam.START_TIMEOUT_S,
        )
        processes.wait_until(
            "tls seaweed https", lambda: processes.port_open(ports["https"]), pid, log, 30
        )
        http_url = f"http://{HOST}:{ports['s3']}"
        iam.provision_seaweed(paths, http_url, keys)
        yield TlsSeaweed(
            https_url=f"https://{HOST}:{ports['https']}",
            http_url=http_url,
            keys=keys,
            role_arn=localaws.role_arn(localaws.SEAWEED_ROLE),
            bucket=localaws.SEAWEED_BUCKET,
            region=localaws.REGION,
        )
    finally:
        localaws.kill_group(pid, servers.SEAWEED_STOP_TIMEOUT_S)


@dataclass
class ConnectProxy:
    """A CONNECT-only HTTP proxy on 127.0.0.1 that records each tunnel's target."""

    targets: list[str] = field(default_factory=list)
    server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://{HOST}:{self.server.sockets[0].getsockname()[1]}"

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, HOST, 0)

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.server.wait_closed(), 5)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            method, target, _ = head.split("\r\n", 1)[0].split(" ", 2)
            if method != "CONNECT":
                writer.write(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
                return
            self.targets.append(target)
            host, _, port = target.rpartition(":")
            up_reader, up_writer = await asyncio.open_connection(host, int(port))
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")

            async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
                with contextlib.suppress(ConnectionError):
                    while data := await src.read(65536):
                        dst.write(data)
                        await dst.drain()
                dst.close()

            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def proxy() -> AsyncIterator[ConnectProxy]:
    p = ConnectProxy()
    await p.start()
    yield p
    await p.stop()


def _store(client: S3Client, sw: TlsSeaweed, creds: dict[str, Any]) -> S3ObjectStore:
    location = parse_uri_path(f"https://{sw.bucket}.s3.{sw.region}.amazonaws.com/", client.s3)
    return S3ObjectStore(
        location, StaticSource(sts_creds(creds)), clients=client, observer=Recorder()
    )


def _role_creds(sw: TlsSeaweed) -> dict[str, Any]:
    with localaws.closing_client(
        "sts", sw.http_url, sw.keys["daemon_access_key_id"], sw.keys["daemon_secret_access_key"]
    ) as sts:
        return dict(sts.assume_role(RoleArn=sw.role_arn, RoleSessionName="tls")["Credentials"])


async def _every_s3_call(store: S3ObjectStore) -> None:
    """HEAD, part layout, LIST and ranged GET of the provisioned multipart object."""
    key = localaws.MULTIPART_KEY
    meta = await store.head(key)
    assert meta.size == 12 << 20
    assert await store.part_size(key, if_match=meta.etag) == iam.MULTIPART_PART_SIZE
    page = await store.list_page("", max_keys=1000)
    assert key in [m.key for m in page.objects]
    sink = Buffer(5, 1000)
    await store.get_range(key, 5, 1004, sink, if_match=meta.etag)
    assert bytes(sink.data) == localaws.sample_bytes("multipart", 12 << 20)[5:1005]


@pytest.mark.parametrize("how", ["setting", "AWS_CA_BUNDLE"])
async def test_the_ca_bundle_is_honoured_on_every_s3_call(
    tls_seaweed: TlsSeaweed, pki: Pki, how: str
) -> None:
    if how == "setting":
        client = S3Client(
            S3Config(endpoint_url=tls_seaweed.https_url, ca_bundle=str(pki.ca)), environ={}
        )
    else:
        config = S3Config(endpoint_url=tls_seaweed.https_url)
        client = S3Client(config, environ={"AWS_CA_BUNDLE": str(pki.ca)})
    try:
        await _every_s3_call(_store(client, tls_seaweed, _role_creds(tls_seaweed)))
    finally:
        await client.close()


@pytest.mark.parametrize("how", ["setting", "AWS_CA_BUNDLE", "system"])
async def test_a_wrong_ca_fails_at_once_naming_the_setting(
    tls_seaweed: TlsSeaweed, pki: Pki, how: str
) -> None:
    config = S3Config(
        endpoint_url=tls_seaweed.https_url,
        ca_bundle=str(pki.stranger) if how == "setting" else None,
    )
    environ = {"AWS_CA_BUNDLE": str(pki.stranger)} if how == "AWS_CA_BUNDLE" else {}
    client = S3Client(config, environ=environ)
    store = _store(client, tls_seaweed, _role_creds(tls_seaweed))
    named = {
        "setting": f"[s3] ca_bundle = {pki.stranger}",
        "AWS_CA_BUNDLE": f"AWS_CA_BUNDLE={pki.stranger}",
        "system": "[s3] ca_bundle and AWS_CA_BUNDLE unset",
    }[how]
    try:
        for call in (
            lambda: store.head(localaws.MULTIPART_KEY),
            lambda: store.get_range(localaws.MULTIPART_KEY, 0, 9, Buffer(0, 10)),
            lambda: store.list_page(""),
        ):
            with pytest.raises(S3Unavailable) as e:
                await call()
            assert "not trusted" in str(e.value) and named in str(e.value)
        assert client.http.open_connections == 0
    finally:
        await client.close()


def test_an_unreadable_ca_bundle_stops_start_up(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"\[s3\] ca_bundle: cannot load"):
        S3Client(S3Config(ca_bundle=str(tmp_path / "missing.pem")), environ={})
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    with pytest.raises(ValueError, match="AWS_CA_BUNDLE: cannot load"):
        S3Client(S3Config(), environ={"AWS_CA_BUNDLE": str(tmp_path / "junk.pem")})


def _sts(sw: TlsSeaweed, ca: Path | None) -> AioStsClient:
    from aiobotocore.session import AioSession

    def session() -> AioSession:
        s = AioSession()
        s.set_credentials(sw.keys["daemon_access_key_id"], sw.keys["daemon_secret_access_key"])
        return s

    config = StsConfig(region=sw.region, endpoint_url=sw.https_url, ca_bundle=ca and str(ca))
    return AioStsClient(config, session_factory=session, max_attempts=1)


async def _assume(sts: AioStsClient, sw: TlsSeaweed) -> Any:
    async with sts:
        return await sts.assume_role(
            role_arn=sw.role_arn, session_name="s3feed-tls", external_id="acme", duration=900
        )


async def test_the_sts_plane_honours_its_ca_bundle(
    tls_seaweed: TlsSeaweed, pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_CA_BUNDLE", raising=False)
    assumed = await _assume(_sts(tls_seaweed, pki.ca), tls_seaweed)
    assert assumed.credentials.session_token
    with pytest.raises(StsUnavailable) as e:
        await _assume(_sts(tls_seaweed, pki.stranger), tls_seaweed)
    assert "not trusted" in str(e.value) and "[sts] ca_bundle" in str(e.value)
    assert not e.value.retryable, "retrying cannot make it trusted"
    # Unset, AWS_CA_BUNDLE is botocore's own: the same for STS as for S3.
    monkeypatch.setenv("AWS_CA_BUNDLE", str(pki.ca))
    assert (await _assume(_sts(tls_seaweed, None), tls_seaweed)).credentials.session_token


async def test_https_proxy_carries_both_planes_and_no_proxy_bypasses_it(
    tls_seaweed: TlsSeaweed, pki: Pki, proxy: ConnectProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    authority = tls_seaweed.https_url.removeprefix("https://")
    monkeypatch.delenv("AWS_CA_BUNDLE", raising=False)
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    monkeypatch.delenv("https_proxy", raising=False)
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    environ = {"HTTPS_PROXY": proxy.url}
    config = S3Config(endpoint_url=tls_seaweed.https_url, ca_bundle=str(pki.ca))
    client = S3Client(config, environ=environ)
    try:
        await _every_s3_call(_store(client, tls_seaweed, _role_creds(tls_seaweed)))
    finally:
        await client.close()
    assert proxy.targets and set(proxy.targets) == {authority}, "S3 went through the proxy"
    s3_tunnels = len(proxy.targets)
    # STS (aiobotocore) reads the same environment.
    assert (await _assume(_sts(tls_seaweed, pki.ca), tls_seaweed)).credentials.session_token
    assert len(proxy.targets) > s3_tunnels, "STS went through the proxy"
    # NO_PROXY: straight to the server, on both planes.
    seen = len(proxy.targets)
    monkeypatch.setenv("NO_PROXY", f"localhost,{HOST}")
    client = S3Client(config, environ={**environ, "NO_PROXY": f"localhost,{HOST}"})
    try:
        await _every_s3_call(_store(client, tls_seaweed, _role_creds(tls_seaweed)))
    finally:
        await client.close()
    assert (await _assume(_sts(tls_seaweed, pki.ca), tls_seaweed)).credentials.session_token
    assert len(proxy.targets) == seen, "NO_PROXY bypasses the proxy"
    # The tunnel is end to end: through the proxy, a wrong CA still fails.
    client = S3Client(
        S3Config(endpoint_url=tls_seaweed.https_url, ca_bundle=str(pki.stranger)),
        environ=environ,
    )
    try:
        with pytest.raises(S3Unavailable, match="not trusted"):
            await _store(client, tls_seaweed, _role_creds(tls_seaweed)).head("x")
    finally:
        await client.close()
    assert len(proxy.targets) == seen + 1


@dataclass(frozen=True)
class _DaemonTarget:
    """What tests/integration/daemonproc.py needs of a local AWS."""

    region: str
    endpoint_url: str
    daemon_access_key_id: str
    daemon_secret_access_key: str


def test_the_daemon_over_https_end_to_end(
    tls_seaweed: TlsSeaweed, pki: Pki, tmp_path: Path
) -> None:
    """Every request the daemon makes (AssumeRole, HEAD, part layout, GET, the cache's
    download) over TLS with its CA bundles; then the same with a stranger CA is refused
    on the S3 plane with the setting named."""
    from daemonproc import running_daemon

    from s3feed.client import Client, S3feedError

    sw = tls_seaweed
    target = _DaemonTarget(
        sw.region,
        sw.https_url,
        sw.keys["daemon_access_key_id"],
        sw.keys["daemon_secret_access_key"],
    )
    uri = f"https://{sw.bucket}.s3.{sw.region}.amazonaws.com/"
    expected = localaws.sample_bytes("multipart", 12 << 20)
    for ca, ok in ((pki.ca, True), (pki.stranger, False)):
        with running_daemon(
            target,  # type: ignore[arg-type]
            tmp_path / ca.stem,
            sts={"ca_bundle": str(pki.ca)},
            s3={"ca_bundle": str(ca)},
        ) as daemon:
            client = Client(str(daemon.socket), timeout=60)
            client.create_job("tls", "acme", uri, sw.role_arn)
            if ok:
                got = b"".join(client.read_object("tls", localaws.MULTIPART_KEY))
                assert got == expected
                fetched = client.fetch("tls", localaws.MULTIPART_KEY)
                assert Path(fetched["Path"]).read_bytes() == expected
            else:
                with pytest.raises(S3feedError) as e:
                    b"".join(client.read_object("tls", localaws.MULTIPART_KEY))
                assert "S3Unavailable" in str(e.value.code)
                assert f"[s3] ca_bundle = {ca}" in str(e.value)
