"""A remote in an S3-compatible bucket (AWS S3, MinIO, Ceph RGW, SeaweedFS, ...).

Settings come only from boto3's own resolution (environment, ~/.aws/config and credentials,
``AWS_ENDPOINT_URL`` for non-AWS servers), so no secret ever enters vers's config or output.

Refs move by compare-and-swap. Where the server honours conditional PutObject (``If-None-Match:
*`` to create, ``If-Match: <etag>`` to replace), that is the CAS; this is probed once per
transport, because some servers silently ignore the headers. Otherwise writers serialise on lock
objects: each writer puts its own ``locks/refs-*.lock``, lists, and holds the lock only if its own
is the only live one (with read-after-write consistent listing, two writers cannot both see
themselves alone; if both see each other, both back off and retry). Locks expire after
``LOCK_EXPIRY_SECONDS`` so a killed writer cannot wedge the remote.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from vers.errors import RemoteError
from vers.remote.transport import LOCK_EXPIRY_SECONDS, RemoteObjectMissing, Transport

LOCK_WAIT_SECONDS = 60.0
_CONFLICT_CODES = {"PreconditionFailed", "ConditionalRequestConflict", "412", "409"}
_MISSING_CODES = {"NoSuchKey", "404", "NotFound"}


# What a process that reads a remote for someone else (the FUSE backing daemon) needs of that
# someone's AWS environment; boto3's own resolution covers the rest.
AWS_ENV_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION", "AWS_REGION",
                "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_EC2_METADATA_DISABLED")


_SESSIONS: dict[tuple[tuple[str, str], ...], Any] = {}
_SESSIONS_LOCK = threading.Lock()
# Whether a server honours conditional writes, by (endpoint, bucket), probed once per process.
_CONDITIONAL: dict[tuple[str, str], bool] = {}


def _make_client(env: Mapping[str, str] | None, timeout: float | None) -> Any:
    """A client for ``env`` (None: this process's environment). One botocore session per set of
    settings and process: a session caches the service models, so a second client costs
    ~10 ms instead of ~300 (the backing daemon makes one per restored repository)."""
    import boto3
    from botocore.config import Config

    timeouts = {} if timeout is None else {"connect_timeout": timeout, "read_timeout": timeout}
    config = Config(max_pool_connections=32, retries={"max_attempts": 5, "mode": "standard"},
                    **timeouts)
    # this process's AWS environment may change between clients (tests, benchmarks)
    key = (("env", "given" if env is not None else "process"),
           *sorted((k, v) for k, v in (env if env is not None else os.environ).items()
                   if k in AWS_ENV_KEYS))
    with _SESSIONS_LOCK:  # making clients from one session is not thread-safe
        session = _SESSIONS.get(key)
        if session is None:
            if env is None:
                session = boto3.session.Session()
            else:
                session = boto3.session.Session(
                    aws_access_key_id=env.get("AWS_ACCESS_KEY_ID"),
                    aws_secret_access_key=env.get("AWS_SECRET_ACCESS_KEY"),
                    aws_session_token=env.get("AWS_SESSION_TOKEN"),
                    region_name=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION"),
                    profile_name=env.get("AWS_PROFILE"))
            _SESSIONS[key] = session
        endpoint = None if env is None else (env.get("AWS_ENDPOINT_URL_S3")
                                             or env.get("AWS_ENDPOINT_URL"))
        return session.client("s3", config=config, endpoint_url=endpoint)


class S3Transport(Transport):
    def __init__(self, bucket: str, prefix: str = "", conditional: bool | None = None,
                 env: Mapping[str, str] | None = None, timeout: float | None = None) -> None:
        """``env``: AWS_* settings to use instead of this process's environment (a daemon
        reading for a client passes the client's); ``timeout``: seconds to connect and per
        read (botocore's default is 60), for readers that must fail in bounded time."""
        super().__init__()
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.url = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        forced = os.environ.get("VERS_S3_CONDITIONAL")
        if conditional is None and forced is not None:
            conditional = forced not in ("0", "no", "false")
        self._conditional = conditional
        self._timeout = timeout
        self._env = None if env is None else dict(env)
        self._client: Any = None
        self._client_lock = threading.Lock()

    @property
    def client(self) -> Any:
        """The boto3 client, made on the first request: importing boto3 and making a client
        takes 0.5-1 s on a loaded machine, and a process that never talks to the remote (a lazy
        restore whose objects the backing daemon brings in) should not pay for it."""
        with self._client_lock:
            if self._client is None:
                self._client = _make_client(self._env, self._timeout)
            return self._client

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _call(self, what: str, key: str, fn: Any, **kwargs: Any) -> Any:
        """One S3 request with botocore's errors turned into RemoteError (never naming secrets)."""
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        try:
            return fn(Bucket=self.bucket, **kwargs)
        except NoCredentialsError as exc:
            raise RemoteError(
                f"{self.url}: no AWS credentials found (set them in the AWS environment or "
                "~/.aws/credentials)") from exc
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in _MISSING_CODES:
                raise RemoteObjectMissing(self.url, key) from exc
            if code == "NoSuchBucket":
                raise RemoteError(
                    f"{self.url}: bucket {self.bucket} does not exist (create it with your S3 "
                    f"tools, or add the remote with `vers remote add --create-bucket NAME "
                    f"{self.url}`)") from exc
            raise RemoteError(f"{self.url}: {what} {key} failed: {code or exc}") from exc
        except BotoCoreError as exc:
            raise RemoteError(f"{self.url}: {what} {key} failed: {exc}") from exc

    def create_bucket(self) -> None:
        """Create the bucket (for `vers remote add --create-bucket`); one we own already is fine."""
        from botocore.exceptions import ClientError

        try:
            self._call("CREATE", self.bucket, self.client.head_bucket)
            return
        except RemoteError:
            pass
        try:
            self._call("CREATE", self.bucket, self.client.create_bucket)
        except RemoteError as exc:
            cause = exc.__cause__
            if isinstance(cause, ClientError) and cause.response.get("Error", {}).get("Code") \
                    == "BucketAlreadyOwnedByYou":
                return
            raise

    # -- verbs --------------------------------------------------------------------------------
    def _get(self, key: str) -> bytes:
        r = self._call("GET", key, self.client.get_object, Key=self._key(key))
        return bytes(r["Body"].read())

    def _get_range(self, key: str, start: int, length: int) -> bytes:
        if length == 0:
            return b""
        r = self._call("GET", key, self.client.get_object, Key=self._key(key),
                       Range=f"bytes={start}-{start + length - 1}")
        return bytes(r["Body"].read())

    def _put(self, key: str, data: bytes) -> None:
        self._call("PUT", key, self.client.put_object, Key=self._key(key), Body=data)

    def _list(self, prefix: str) -> dict[str, int]:
        return {k: size for k, (size, _mtime) in self._list_detailed(prefix).items()}

    def _list_detailed(self, prefix: str) -> dict[str, tuple[int, datetime]]:
        full = self._key(prefix)
        strip = len(self.prefix) + 1 if self.prefix else 0
        out: dict[str, tuple[int, datetime]] = {}
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Prefix": full}
            if token:
                kwargs["ContinuationToken"] = token
            r = self._call("LIST", prefix, self.client.list_objects_v2, **kwargs)
            for obj in r.get("Contents", []):
                out[obj["Key"][strip:]] = (int(obj["Size"]), obj["LastModified"])
            if not r.get("IsTruncated"):
                return out
            token = r.get("NextContinuationToken")

    def _delete(self, key: str) -> None:
        try:
            self._call("DELETE", key, self.client.delete_object, Key=self._key(key))
        except RemoteObjectMissing:
            pass

    def _read_versioned(self, key: str) -> tuple[bytes, str] | None:
        try:
            r = self._call("GET", key, self.client.get_object, Key=self._key(key))
        except RemoteObjectMissing:
            return None
        return bytes(r["Body"].read()), str(r["ETag"])

    # -- compare-and-swap ---------------------------------------------------------------------
    @property
    def conditional_writes(self) -> bool:
        if self._conditional is None:
            where = (self.client.meta.endpoint_url, self.bucket)
            with _SESSIONS_LOCK:
                known = _CONDITIONAL.get(where)
            if known is None:  # once per server and bucket in a process, not per transport
                known = self._probe_conditional()
                with _SESSIONS_LOCK:
                    _CONDITIONAL[where] = known
            self._conditional = known
        return self._conditional

    def _probe_conditional(self) -> bool:
        """Does the server refuse a second If-None-Match:* create of the same key?"""
        from botocore.exceptions import ClientError

        key = self._key(f"locks/probe-{uuid.uuid4().hex}")
        try:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=b"1", IfNoneMatch="*")
        except ClientError:
            return False
        try:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=b"2", IfNoneMatch="*")
            supported = False
        except ClientError as exc:
            supported = str(exc.response.get("Error", {}).get("Code")) in _CONFLICT_CODES
        finally:
            self.client.delete_object(Bucket=self.bucket, Key=key)
        return supported

    def _put_if(self, key: str, data: bytes, expected: str | None) -> bool:
        if self.conditional_writes:
            return self._put_conditional(key, data, expected)
        return super()._put_if(key, data, expected)

    def _unlock(self, token: str) -> None:
        self._delete(token)

    def _put_conditional(self, key: str, data: bytes, expected: str | None) -> bool:
        from botocore.exceptions import ClientError

        cond = {"IfNoneMatch": "*"} if expected is None else {"IfMatch": expected}
        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, **cond)
            return True
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            status = str(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
            if code in _CONFLICT_CODES or status in ("409", "412") or (
                expected is not None and code in _MISSING_CODES
            ):
                return False
            raise RemoteError(f"{self.url}: conditional PUT {key} failed: {code}") from exc

    def _lock(self) -> str:
        deadline = time.monotonic() + LOCK_WAIT_SECONDS
        while True:
            mine = f"locks/refs-{uuid.uuid4().hex}.lock"
            self._put(mine, json.dumps({"host": os.uname().nodename, "pid": os.getpid(),
                                        "time": time.time()}).encode())
            locks = self._list_detailed("locks/refs-")
            now = locks.get(mine, (0, datetime.now(UTC)))[1]
            live = []
            for k, (_size, mtime) in locks.items():
                if k != mine and (now - mtime).total_seconds() > LOCK_EXPIRY_SECONDS:
                    self._delete(k)  # left behind by a killed writer
                elif k != mine:
                    live.append(k)
            if not live:
                return mine
            self._delete(mine)
            if time.monotonic() > deadline:
                raise RemoteError(f"{self.url}: refs are locked by another writer ({live[0]}); "
                                  f"a stale lock expires after {LOCK_EXPIRY_SECONDS:.0f}s")
            time.sleep(random.uniform(0.05, 0.3))
