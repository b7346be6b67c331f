"""Isolation between callers and tenants, and no secret anywhere the daemon writes.

`s3feed serve` on the local AWS, STS through the recording proxy
(faultproxy.py) with credentials that live 4 s, so sessions are refreshed
and every secret key and session token issued is known to the test. Then:
another uid (setpriv --reuid=nobody) cannot see or use root's jobs; the
socket file has the configured mode; tenant B never gets tenant A's cached
object; and a grep of everything the daemon logged, answered (API, CLI,
/metrics on both listeners), its /proc cmdline, comm and environ, and every
file under its cache directory finds none of the issued secrets (nor, except
in environ where it is passed on purpose, the daemon's own secret key).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from daemonproc import S3FEED
from faultproxy import ISSUED, wait_until
from reliability import (
    TALLY,
    MiB,
    Rig,
    blob,
    check_bytes,
    check_file,
    metric_value,
    proxied_daemon,
    remember,
    results_table,  # noqa: F401 (session fixture: writes the results table)
    uri,
)

from s3feed.client import Client, S3feedError

if TYPE_CHECKING:
    from conftest import LocalAws, TestBucket

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for another uid")
SYSTEM_PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else "python3"


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """World-traversable and short (AF_UNIX paths are limited to 108 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="s3feed-iso-", dir="/tmp"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def as_nobody(socket: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """One request as uid nobody, with the system Python's standard library only."""
    script = textwrap.dedent(
        f"""
        import http.client, json, socket
        class C(http.client.HTTPConnection):
            def connect(self):
                self.sock = socket.socket(socket.AF_UNIX)
                self.sock.connect({socket!r})
        c = C("localhost", timeout=30)
        body = {json.dumps(body)!r}
        c.request({method!r}, {path!r}, body=None if body == "null" else body,
                  headers={{"Content-Type": "application/json"}})
        r = c.getresponse()
        raw = r.read()
        print(json.dumps([r.status, json.loads(raw) if raw.startswith(b"{{") else None]))
        """
    )
    out = subprocess.run(
        [
            "setpriv",
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            SYSTEM_PYTHON,
            "-I",
            "-c",
            script,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if out.returncode != 0:
        raise PermissionError(out.stderr.strip().splitlines()[-1])
    status, doc = json.loads(out.stdout)
    return status, doc


def job_body(job_id: str, local_aws: LocalAws, bucket: str) -> dict[str, Any]:
    return {
        "JobId": job_id,
        "TenantName": local_aws.acme_tenant,
        "Source": {
            "Provider": "AmazonS3",
            "UriPath": uri(bucket, "in/"),
            "RoleArnToAssume": local_aws.acme_role_arn,
        },
    }


def test_other_uid_cannot_see_or_use_a_job_and_socket_mode_is_as_configured(
    local_aws: LocalAws, bucket: TestBucket, short_dir: Path
) -> None:
    data = remember(blob(MiB, seed=81))
    bucket.put("in/a.bin", data)
    with proxied_daemon(
        local_aws, short_dir / "d", api={"socket": short_dir / "s.sock", "socket_mode": "0666"}
    ) as rig:
        assert (short_dir / "s.sock").stat().st_mode & 0o777 == 0o666
        client = Client(rig.socket, timeout=30)
        client.create_job(
            "root-job", local_aws.acme_tenant, uri(bucket.name, "in/"), local_aws.acme_role_arn
        )
        for method, path, body in [
            ("GET", "/v1/jobs/root-job", None),
            ("GET", "/v1/jobs/root-job/objects", None),
            ("GET", "/v1/jobs/root-job/objects/a.bin", None),
            ("POST", "/v1/jobs/root-job/fetches", {"Key": "a.bin"}),
            ("DELETE", "/v1/jobs/root-job", None),
        ]:
            status, doc = as_nobody(rig.socket, method, path, body)
            assert (status, doc["Error"]["Code"]) == (404, "NoSuchJob"), (method, path, doc)
        assert as_nobody(rig.socket, "GET", "/v1/jobs") == (200, {"Jobs": []})
        # nobody's own job: nobody sees only it, root sees both, the object is readable.
        status, doc = as_nobody(
            rig.socket, "POST", "/v1/jobs", job_body("nobody-job", local_aws, bucket.name)
        )
        assert status == 201, doc
        status, doc = as_nobody(rig.socket, "GET", "/v1/jobs")
        assert [j["JobId"] for j in doc["Jobs"]] == ["nobody-job"]
        assert {j["JobId"] for j in client.list_jobs()} == {"root-job", "nobody-job"}
        assert check_bytes(data, b"".join(client.read_object("root-job", "a.bin")))
        assert client.get_job("root-job")["Transfers"][-1]["State"] == "done"

    with proxied_daemon(
        local_aws, short_dir / "d2", api={"socket": short_dir / "t.sock", "socket_mode": "0600"}
    ) as rig:
        assert (short_dir / "t.sock").stat().st_mode & 0o777 == 0o600
        with pytest.raises(PermissionError):
            as_nobody(rig.socket, "GET", "/v1/jobs")
        assert Client(rig.socket).list_jobs() == []


def test_tenant_b_never_gets_tenant_a_cached_object(
    local_aws: LocalAws, bucket: TestBucket, globex_bucket: TestBucket, tmp_path: Path
) -> None:
    data = remember(blob(2 * MiB, seed=82))
    bucket.put("in/master.mov", data)
    globex_data = remember(blob(2 * MiB, seed=83))
    globex_bucket.put("in/master.mov", globex_data)
    with proxied_daemon(local_aws, tmp_path) as rig:
        client = Client(rig.socket, timeout=30)
        client.create_job(
            "acme", local_aws.acme_tenant, uri(bucket.name, "in/"), local_aws.acme_role_arn
        )
        acme_path = client.fetch("acme", "master.mov")["Path"]
        check_file(data, acme_path)
        hits = metric_value(rig.metrics(), "s3feed_cache_hits_total")
        # globex's role cannot read acme's bucket: S3 decides, not the cache.
        client.create_job(
            "globex-on-acme",
            local_aws.globex_tenant,
            uri(bucket.name, "in/"),
            local_aws.globex_role_arn,
        )
        for attempt in (
            lambda: client.fetch("globex-on-acme", "master.mov"),
            lambda: b"".join(client.read_object("globex-on-acme", "master.mov")),
        ):
            with pytest.raises(S3feedError) as err:
                attempt()
            assert (err.value.status, err.value.code) == (403, "AccessDenied")
        assert metric_value(rig.metrics(), "s3feed_cache_hits_total") == hits
        # Same key, same folder shape, globex's own bucket: its own entry and bytes.
        client.create_job(
            "globex",
            local_aws.globex_tenant,
            uri(globex_bucket.name, "in/"),
            local_aws.globex_role_arn,
        )
        globex_path = client.fetch("globex", "master.mov")["Path"]
        assert globex_path != acme_path
        check_file(globex_data, globex_path)
        check_file(data, acme_path)


def _cli(rig: Rig, *args: str) -> str:
    assert rig.daemon is not None
    out = subprocess.run(
        [S3FEED, *args], env=rig.daemon.env, capture_output=True, text=True, timeout=60
    )
    return out.stdout + out.stderr


def test_no_secret_in_logs_answers_metrics_process_or_cache(
    local_aws: LocalAws, bucket: TestBucket, tmp_path: Path
) -> None:
    data = remember(blob(3 * MiB, seed=84))
    bucket.put("in/a.bin", data)
    answers: list[tuple[str, str | bytes]] = []
    with proxied_daemon(local_aws, tmp_path, sts_expires_in=4) as rig:
        client = Client(rig.socket, timeout=30)

        def keep(name: str, value: Any) -> Any:
            answers.append((name, json.dumps(value, default=str)))
            return value

        keep(
            "create",
            client.create_job(
                "s", local_aws.acme_tenant, uri(bucket.name, "in/"), local_aws.acme_role_arn
            ),
        )
        keep("fetch", client.fetch("s", "a.bin"))
        assert check_bytes(data, b"".join(client.read_object("s", "a.bin")))
        keep("list", client.list_objects("s"))
        keep("health", client.health())
        keep("trust", client.trust_policy(local_aws.acme_tenant))
        for bad in (
            lambda: client.create_job(
                "x", local_aws.globex_tenant, uri(bucket.name), local_aws.acme_role_arn
            ),
            lambda: client.fetch("s", "missing.bin"),
            lambda: client.get_job("nope"),
        ):
            with pytest.raises(S3feedError) as err:
                bad()
            keep("error", [err.value.code, err.value.message])
        # Let the 4 s credentials be refreshed at least twice: more secrets issued.
        doc = wait_until(
            lambda: (d := client.get_job("s"))["Refreshes"] >= 2 and d, 15, "refreshes"
        )
        keep("job", doc)
        keep("jobs", client.list_jobs())
        for args in (
            ("job", "list"),
            ("job", "show", "s"),
            ("ls", "s"),
            ("status",),
            ("fetch", "s", "a.bin"),
        ):
            answers.append(("cli " + " ".join(args), _cli(rig, *args)))
        answers.append(("metrics tcp", rig.metrics()))
        conn, resp = client._send(("GET", "/metrics", None))
        answers.append(("metrics socket", resp.read()))
        conn.close()
        pid = rig.pid
        for name in ("cmdline", "comm"):
            answers.append((f"/proc/{pid}/{name}", Path(f"/proc/{pid}/{name}").read_bytes()))
        environ = Path(f"/proc/{pid}/environ").read_bytes()
        client.delete_job("s")

        session_secrets = set(rig.sts.issued_secrets)
        assert len(session_secrets) >= 6, "three sessions or more: two secrets each"
        found = rig.grep_secrets(answers)
        assert found == [], found
        # environ carries the daemon's own keys by design, never a session's.
        leaked = [s[:6] for s in ISSUED if s.encode() in environ]
        TALLY.places_grepped += 1
        TALLY.secrets_found += len(leaked)
        assert leaked == []
        own = local_aws.daemon_secret_access_key.encode()
        own_leaks = [
            name for name, v in answers if own in (v if isinstance(v, bytes) else v.encode())
        ]
        own_leaks += [str(p) for p in rig.logs if own in p.read_bytes()]
        TALLY.secrets_found += len(own_leaks)
        assert own_leaks == [], f"the daemon's own secret key in {own_leaks}"
