"""client/documents.py: a Destination's request body, and that the clients'
answers are typed for mypy (a misuse is an error, not Any)."""

from __future__ import annotations

from pathlib import Path

import pytest
from mypy import api as mypy_api

from s3feed.client import Destination


def test_a_destination_sends_only_what_is_set() -> None:
    assert Destination("https://b.s3.amazonaws.com/o/").body() == {
        "Provider": "AmazonS3",
        "UriPath": "https://b.s3.amazonaws.com/o/",
    }
    full = Destination(
        "https://b.s3.amazonaws.com/o/",
        role_arn="arn:aws:iam::123456789012:role/w",
        duration=1800,
        server_side_encryption="aws:kms",
        kms_key_id="alias/k",
    )
    assert full.body() == {
        "Provider": "AmazonS3",
        "UriPath": "https://b.s3.amazonaws.com/o/",
        "RoleArnToAssume": "arn:aws:iam::123456789012:role/w",
        "RoleSessionDurationInSeconds": 1800,
        "ServerSideEncryption": "aws:kms",
        "SSEKMSKeyId": "alias/k",
    }


@pytest.mark.timeout(120)
def test_mypy_sees_the_answers_types(tmp_path: Path) -> None:
    misuse = tmp_path / "misuse.py"
    misuse.write_text(
        "from s3feed.client import Client\n"
        "def f() -> None:\n"
        "    c = Client()\n"
        "    n: int = c.get_job('x')['JobId']\n"
        "    c.fetch('x', 'k')['Nope']\n"
        "    c.create_job('j', 't', 'u', 'r', encoder_uids=['alice'])\n"
    )
    root = Path(__file__).parents[2]
    out, _, status = mypy_api.run(
        ["--config-file", str(root / "pyproject.toml"), "--no-incremental", str(misuse)]
    )
    assert status == 1, out
    assert "misuse.py:4: error: Incompatible types in assignment" in out
    assert 'misuse.py:5: error: TypedDict "Transfer" has no key "Nope"' in out
    assert "misuse.py:6: error: List item 0 has incompatible type" in out
