"""One writer at a time per lake: a lock object beside the lake, on a local disk or an object store.

Every command that changes a lake (``ingest``, ``filter``, ``validate --repair``) holds the lock for its whole
run; readers never take it. The lock is ``<lake>.lock``, a small JSON document naming its holder (command, host,
pid, since) and a lease (``expires``) that a background thread renews while the holder runs:

- it is taken by an exclusive create (``O_CREAT | O_EXCL`` locally; a put with ``If-None-Match: *`` on an
  object store), so two writers started together cannot both get it;
- a second writer is refused in one line naming the holder, or waits for it with ``--wait``;
- a holder that died without releasing it (SIGKILL, a lost machine) is taken over: at once when it was a
  process of this host that no longer exists, otherwise when its lease has expired; the take-over is itself
  exclusive (a rename of that very file locally; a put with ``If-Match`` on its ETag on an object store).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from flair_lake import config, storage
from flair_lake.errors import LakeBusyError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Holder:
    """Who holds a lock, as its JSON document says."""

    command: str
    host: str
    pid: int
    since: str
    expires: float
    token: str

    @classmethod
    def parse(cls, text: str | bytes) -> Holder | None:
        """Return the holder a lock document names, None when it cannot be read (a half-written document)."""
        try:
            d = json.loads(text)
            return cls(str(d["command"]), str(d["host"]), int(d["pid"]), str(d["since"]), float(d["expires"]),
                       str(d["token"]))
        except (ValueError, KeyError, TypeError):
            return None

    def describe(self) -> str:
        """Return "filter (host a, pid 12, since 2026-12-02T01:00:00+00:00)"."""
        return f"{self.command} (host {self.host}, pid {self.pid}, since {self.since})"

    def dead(self) -> bool:
        """Return True when the holder is surely gone: a process of this host that no longer exists, or a lease
        that has expired (a holder renews it every third of its length while it runs)."""
        if time.time() > self.expires:
            return True
        if self.host != socket.gethostname():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # alive, another user's
            return False
        try:  # killed but not yet reaped by its parent: a zombie holds nothing
            return Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
        except (OSError, IndexError):
            return False


def lock_path(lake: str) -> str:
    """Return where the lock of ``lake`` lives: ``<lake>.lock`` beside it (the lake may not exist yet)."""
    return str(lake).rstrip("/") + ".lock"


class _LocalBackend:
    """The lock as a local file."""

    def __init__(self, path: str) -> None:
        self.path = path

    def create(self, doc: bytes) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as fh:
            fh.write(doc)
            fh.flush()
            os.fsync(fh.fileno())
        return True

    def read(self) -> tuple[bytes, str] | None:
        try:
            with open(self.path, "rb") as fh:
                data = fh.read()
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return data, f"{st.st_ino}-{st.st_mtime_ns}"

    def take_over(self, version: str) -> bool:
        """Remove the stale lock whose version is ``version``; True when this process removed it.

        The file is first moved aside (only one taker can move a given file), then checked: a lock that is not
        the stale one (a taker was quicker and a live writer holds it now) is put back.
        """
        current = self.read()
        if current is None or current[1] != version:
            return False
        aside = f"{self.path}.stale-{uuid.uuid4().hex}"
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return False
        with open(aside, "rb") as fh:
            moved = fh.read()
        if moved != current[0]:  # someone else's fresh lock: give it back (unless a third one was created)
            with contextlib.suppress(FileExistsError):
                os.link(aside, self.path)
            os.unlink(aside)
            return False
        os.unlink(aside)
        return True

    def renew(self, doc: bytes, token: str) -> bool:
        """Rewrite the lock with a later lease; False when it is no longer this holder's (taken over)."""
        current = self.read()
        holder = Holder.parse(current[0]) if current else None
        if holder is None or holder.token != token:
            return False
        tmp = f"{self.path}.renew-{os.getpid()}"
        with open(tmp, "wb") as fh:
            fh.write(doc)
        os.replace(tmp, self.path)
        return True

    def release(self, token: str) -> None:
        current = self.read()
        if current is not None and (h := Holder.parse(current[0])) is not None and h.token == token:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)


class _ObjectStoreBackend:
    """The lock as an object, written with S3's conditional puts (If-None-Match, If-Match)."""

    def __init__(self, url: str, storage_options: dict | None) -> None:
        import fsspec

        protocol, self.path = url.split("://", 1)
        self.fs = fsspec.filesystem(protocol, **(storage_options or {}))
        self.etag: str | None = None

    def _put(self, doc: bytes, **match) -> bool:
        from botocore.exceptions import ClientError

        try:
            bucket, key, _ = self.fs.split_path(self.path)
            out = self.fs.call_s3("put_object", Bucket=bucket, Key=key, Body=doc, **match)
        except FileExistsError:  # s3fs's name for 412 Precondition Failed: the condition did not hold
            return False
        except (ClientError, OSError) as exc:
            if "PreconditionFailed" in repr(exc) or "ConditionalRequestConflict" in repr(exc):
                return False
            raise
        self.etag = str(out.get("ETag", "")).strip('"')
        self.fs.invalidate_cache(self.path)
        return True

    def create(self, doc: bytes) -> bool:
        return self._put(doc, IfNoneMatch="*")

    def read(self) -> tuple[bytes, str] | None:
        """Return the lock's document and ETag, read in one request (so the two agree), None when absent."""
        from fsspec.asyn import sync

        bucket, key, _ = self.fs.split_path(self.path)

        async def get():
            out = await self.fs._call_s3("get_object", Bucket=bucket, Key=key)
            async with out["Body"] as stream:
                return await stream.read(), str(out.get("ETag", "")).strip('"')

        try:
            return sync(self.fs.loop, get)
        except FileNotFoundError:
            return None

    def take_over(self, version: str) -> bool:
        return False  # replaced by a conditional put of the new holder (see WriterLock._acquire_once)

    def put_over(self, doc: bytes, version: str) -> bool:
        return self._put(doc, IfMatch=f'"{version}"')

    def renew(self, doc: bytes, token: str) -> bool:
        """Rewrite the lock with a later lease, only if it is still the version this holder wrote."""
        return self.etag is not None and self._put(doc, IfMatch=f'"{self.etag}"')

    def release(self, token: str) -> None:
        current = self.read()
        if current is not None and (h := Holder.parse(current[0])) is not None and h.token == token:
            bucket, key, _ = self.fs.split_path(self.path)
            self.fs.call_s3("delete_object", Bucket=bucket, Key=key)
            self.fs.invalidate_cache(self.path)


class WriterLock:
    """The lock of one lake, held by this process for ``command`` (see the module)."""

    def __init__(self, lake: str, command: str, *, storage_options: dict | None = None,
                 lease: float = config.LOCK_LEASE_S) -> None:
        self.lake, self.command, self.lease = lake, command, lease
        url = lock_path(lake)
        self.backend = _ObjectStoreBackend(url, storage_options) if storage.is_url(lake) else _LocalBackend(url)
        self.token = uuid.uuid4().hex
        self.since = dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _doc(self) -> bytes:
        return json.dumps({"command": self.command, "host": socket.gethostname(), "pid": os.getpid(),
                           "since": self.since, "expires": time.time() + self.lease, "token": self.token,
                           "lake": str(self.lake)}).encode()

    def _acquire_once(self) -> Holder | None:
        """Try to take the lock; return None when taken, else its live holder."""
        for _ in range(5):  # a holder that vanishes between our create and our read: try again
            if self.backend.create(self._doc()):
                return None
            current = self.backend.read()
            if current is None:
                continue
            holder = Holder.parse(current[0])
            if holder is not None and not holder.dead():
                return holder
            # a dead holder (or a document its holder died writing): take it over, exclusively
            if isinstance(self.backend, _ObjectStoreBackend):
                if self.backend.put_over(self._doc(), current[1]):
                    log.warning("took over the lock of %s from %s", self.lake,
                                holder.describe() if holder else "a holder that died writing it")
                    return None
            elif self.backend.take_over(current[1]):
                log.warning("took over the lock of %s from %s", self.lake,
                            holder.describe() if holder else "a holder that died writing it")
        current = self.backend.read()
        return Holder.parse(current[0]) if current else None

    def acquire(self, *, wait: bool = False, poll: float = 1.0) -> None:
        """Take the lock, or wait for it with ``wait``.

        Raises:
            LakeBusyError: another writer holds it (without ``wait``).
            StoreUnreachableError: the object store cannot be used (bucket, credentials, endpoint).
        """
        announced = False
        while True:
            try:
                holder = self._acquire_once()
            except Exception as exc:  # noqa: BLE001 - botocore/aiohttp errors have no common base
                from flair_lake.lake import explain_store_error

                err = explain_store_error(self.lake, exc) if storage.is_url(self.lake) else None
                if err is None:
                    raise
                raise err from None
            if holder is None:
                break
            if not wait:
                raise LakeBusyError(f"{self.lake} is being written by {holder.describe()}; run this command when it "
                                    f"has finished, or add --wait to wait for it (a holder that was killed is taken "
                                    f"over when its lease ends, at most {self.lease:.0f} s after its last sign)")
            if not announced:
                log.warning("waiting for %s, which %s holds", self.lake, holder.describe())
                announced = True
            time.sleep(poll)
        self._thread = threading.Thread(target=self._renew, name="flair-lake lock lease", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        while not self._stop.wait(self.lease / 3):
            try:
                if not self.backend.renew(self._doc(), self.token):
                    log.error("the lock of %s was taken over by another writer while this one held it (a pause "
                              "longer than its lease?); stop this command and check the lake", self.lake)
                    return
            except Exception:  # noqa: BLE001 - a failed renewal is retried at the next beat
                log.debug("renewing the lock of %s failed", self.lake, exc_info=True)

    def release(self) -> None:
        """Give the lock back (only if this process still holds it)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.backend.release(self.token)


@contextlib.contextmanager
def writer(lake: str, command: str, *, storage_options: dict | None = None, wait: bool = False):
    """Hold the lake's writer lock for ``command`` within (see :class:`WriterLock`)."""
    lock = WriterLock(lake, command, storage_options=storage_options)
    lock.acquire(wait=wait)
    try:
        yield lock
    finally:
        lock.release()
