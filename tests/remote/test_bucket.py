"""A missing S3 bucket says how to make one; `vers remote add --create-bucket` makes it."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from tests.remote.conftest import vers
from vers.errors import EXIT_BAD_INPUT, EXIT_REMOTE
from vers.testing import make_image
from vers.testing.s3server import SeaweedS3

pytestmark = pytest.mark.s3


def test_missing_bucket_hint_then_create_bucket(tmp_path: Path, s3_env: SeaweedS3) -> None:
    vers("init", cwd=tmp_path)
    bucket = f"fresh-{uuid.uuid4().hex[:10]}"
    url = f"s3://{bucket}/team"
    vers("remote", "add", "origin", url, cwd=tmp_path)
    p = vers("fetch", "origin", cwd=tmp_path, check=False)
    assert p.returncode == EXIT_REMOTE
    assert f"bucket {bucket} does not exist" in p.stderr and "--create-bucket" in p.stderr

    vers("remote", "add", "--create-bucket", "made", url, cwd=tmp_path)
    s3_env.client().head_bucket(Bucket=bucket)  # raises if it does not exist
    make_image(tmp_path / "m.img", 8 * 4096, seed=1)
    vers("snapshot", "--memory", str(tmp_path / "m.img"), cwd=tmp_path)
    vers("push", "made", "main", cwd=tmp_path)
    vers("fetch", "made", cwd=tmp_path)
    # creating it again (a bucket we own already) is fine
    vers("remote", "add", "--create-bucket", "again", url, cwd=tmp_path)


def test_create_bucket_is_only_for_s3(tmp_path: Path) -> None:
    vers("init", cwd=tmp_path)
    p = vers("remote", "add", "--create-bucket", "o", str(tmp_path / "r"), cwd=tmp_path,
             check=False)
    assert p.returncode == EXIT_BAD_INPUT and "--create-bucket is for s3://" in p.stderr
