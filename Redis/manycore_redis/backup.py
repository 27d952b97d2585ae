"""Backups of Redis' data directory to S3 (or any S3-compatible storage), and restore.

Layout under the configured prefix:

    <prefix>/backups/<UTC time>-<reason>.tar.gz   one archive per backup; its SHA-256 is in
                                                   the object's metadata (x-amz-meta-sha256)
    <prefix>/latest.json                           {"key": ..., "sha256": ..., "created": ...}

Rules (docs/ARCHITECTURE.md#redis-durability): restore only into an empty data directory; never
delete a remote copy on restore; verify the checksum of what was downloaded, and fall back to older
backups when the newest is corrupt; keep the newest ``backups-kept`` archives and never prune the
one ``latest.json`` names.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tarfile
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

RDB = "dump.rdb"
AOF_DIR = "appendonlydir"
CHUNK = 1024 * 1024


class BackupError(Exception):
    """Storage cannot be used, or holds nothing usable; the message says which."""


# ----------------------------------------------------------------- pure helpers


def backup_key(prefix: str, when: float, reason: str) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(when))
    millis = int((when % 1) * 1000)
    return f"{prefix.strip('/')}/backups/{stamp}{millis:03d}-{reason}.tar.gz"


def latest_key(prefix: str) -> str:
    return f"{prefix.strip('/')}/latest.json"


def to_prune(keys: Iterable[str], keep: int, protected: str | None) -> list[str]:
    """Archive keys beyond the newest ``keep`` (the names sort by time), never ``protected``."""
    ordered = sorted(set(keys), reverse=True)
    return [k for k in ordered[keep:] if k != protected]


def is_empty(data_dir: Path) -> bool:
    """No data Redis would load (RDB or AOF)."""
    return not (data_dir / RDB).exists() and not (data_dir / AOF_DIR).exists()


def make_archive(data_dir: Path, target: Path, include_aof: bool) -> str:
    """Write a tar.gz of the RDB (and the AOF directory) to ``target``; returns its SHA-256."""
    with tarfile.open(target, "w:gz") as archive:
        if (data_dir / RDB).exists():
            archive.add(data_dir / RDB, arcname=RDB)
        if include_aof and (data_dir / AOF_DIR).is_dir():
            archive.add(data_dir / AOF_DIR, arcname=AOF_DIR)
    return sha256_file(target)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def extract(archive: Path, data_dir: Path) -> list[str]:
    """Unpack into ``data_dir``; only plain files and directories, nothing outside it."""
    with tarfile.open(archive, "r:gz") as tar:
        names = tar.getnames()
        tar.extractall(data_dir, filter="data")
    return names


# ----------------------------------------------------------------- storage


@dataclass(frozen=True)
class StoredBackup:
    key: str
    sha256: str | None


class ObjectStore:
    """The few S3 operations backups need, on a boto3 client."""

    def __init__(self, client: Any, bucket: str, prefix: str) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix

    @classmethod
    def from_config(cls, storage: Any) -> ObjectStore:
        import boto3
        from botocore.config import Config as BotoConfig

        client = boto3.client(
            "s3",
            region_name=storage.region,
            endpoint_url=storage.endpoint_url,
            aws_access_key_id=(
                storage.access_key_id.get_secret_value() if storage.access_key_id else None
            ),
            aws_secret_access_key=(
                storage.secret_access_key.get_secret_value() if storage.secret_access_key else None
            ),
            config=BotoConfig(
                connect_timeout=5, read_timeout=60, retries={"max_attempts": 3, "mode": "standard"}
            ),
        )
        return cls(client, storage.bucket, storage.prefix)

    def upload(self, archive: Path, sha256: str, reason: str) -> str:
        key = backup_key(self.prefix, time.time(), reason)
        with archive.open("rb") as body:
            self.client.put_object(
                Bucket=self.bucket, Key=key, Body=body, Metadata={"sha256": sha256}
            )
        pointer = {"key": key, "sha256": sha256, "created": int(time.time())}
        self.client.put_object(
            Bucket=self.bucket,
            Key=latest_key(self.prefix),
            Body=json.dumps(pointer).encode(),
            ContentType="application/json",
        )
        return key

    def latest(self) -> StoredBackup | None:
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=latest_key(self.prefix))
        except self.client.exceptions.NoSuchKey:
            return None
        pointer = json.loads(response["Body"].read())
        return StoredBackup(str(pointer["key"]), pointer.get("sha256"))

    def backups(self) -> list[StoredBackup]:
        """All archives, newest first, with the checksum from their metadata."""
        keys: list[str] = []
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=f"{self.prefix}/backups/"):
            keys += [obj["Key"] for obj in page.get("Contents", [])]
        out = []
        for key in sorted(keys, reverse=True):
            head = self.client.head_object(Bucket=self.bucket, Key=key)
            out.append(StoredBackup(key, head.get("Metadata", {}).get("sha256")))
        return out

    def download(self, key: str, target: Path) -> str:
        response = self.client.get_object(Bucket=self.bucket, Key=key)
        digest = hashlib.sha256()
        with target.open("wb") as out:
            for chunk in iter(lambda: response["Body"].read(CHUNK), b""):
                digest.update(chunk)
                out.write(chunk)
        return digest.hexdigest()

    def prune(self, keep: int) -> list[str]:
        latest = self.latest()
        doomed = to_prune((b.key for b in self.backups()), keep, latest.key if latest else None)
        for key in doomed:
            self.client.delete_object(Bucket=self.bucket, Key=key)
        return doomed


# ----------------------------------------------------------------- operations


def backup(store: ObjectStore, data_dir: Path, *, reason: str, include_aof: bool, keep: int) -> str:
    """Archive and upload the data directory; returns the key. Raises BackupError."""
    if not (data_dir / RDB).exists():
        raise BackupError(f"nothing to back up: no {RDB} in {data_dir}")
    with tempfile.TemporaryDirectory(prefix="manycore-redis-backup-") as tmp:
        archive = Path(tmp) / "backup.tar.gz"
        sha = make_archive(data_dir, archive, include_aof)
        try:
            key = store.upload(archive, sha, reason)
            pruned = store.prune(keep)
        except Exception as exc:
            raise BackupError(f"upload to object storage failed: {exc}") from exc
        size = archive.stat().st_size
    log.info(
        "backup uploaded", extra={"key": key, "sha256": sha, "bytes": size, "pruned": len(pruned)}
    )
    return key


def restore(store: ObjectStore, data_dir: Path) -> str | None:
    """Restore the newest intact backup into an empty ``data_dir``. Returns its key, or None
    when there is no backup at all. Raises BackupError when storage cannot be reached or
    every backup is corrupt (starting empty then would silently drop queued mail)."""
    if not is_empty(data_dir):
        log.info("data directory not empty: not restoring", extra={"dir": str(data_dir)})
        return None
    try:
        latest = store.latest()
        candidates = store.backups()
    except Exception as exc:
        raise BackupError(f"object storage unreachable: {exc}") from exc
    if latest is None and not candidates:
        log.info("no backup in object storage: starting empty")
        return None
    ordered = ([latest] if latest else []) + [
        c for c in candidates if not latest or c.key != latest.key
    ]
    data_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="manycore-redis-restore-") as tmp:
        for candidate in ordered:
            archive = Path(tmp) / "restore.tar.gz"
            try:
                got = store.download(candidate.key, archive)
            except Exception as exc:  # noqa: BLE001
                log.error("download failed", extra={"key": candidate.key, "error": str(exc)})
                continue
            if candidate.sha256 and got != candidate.sha256:
                log.error(
                    "backup is corrupt (checksum mismatch): trying an older one",
                    extra={"key": candidate.key, "expected": candidate.sha256, "got": got},
                )
                continue
            try:
                names = extract(archive, data_dir)
            except (tarfile.TarError, OSError) as exc:
                log.error(
                    "backup cannot be unpacked", extra={"key": candidate.key, "error": str(exc)}
                )
                continue
            log.info("restored backup", extra={"key": candidate.key, "files": len(names)})
            return candidate.key
    raise BackupError("every backup in object storage is corrupt or unreadable")
