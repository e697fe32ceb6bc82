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

import _thread
import contextlib
import datetime as dt
import json
import logging
import os
import signal
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from flair_lake import config, storage
from flair_lake.errors import FlairLakeError, LakeBusyError

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
        """Return True when the holder is surely gone: a process of this host that no longer exists (or a zombie);
        for a holder on another host, a lease that has expired (a holder renews it every third of its length).

        A live process of this host is never taken for dead, whatever its lease says (a holder paused with
        Ctrl-Z keeps its lock). Hosts are told apart by name: containers sharing a host name but not their
        process ids would see each other's holders as gone.
        """
        if self.host != socket.gethostname():
            return time.time() > self.expires
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
        """Create the lock with ``doc`` if there is none: written aside, then linked under its name, so that no
        reader ever sees it empty or half written; False when a lock exists."""
        tmp = f"{self.path}.new-{uuid.uuid4().hex}"
        with open(tmp, "wb") as fh:
            fh.write(doc)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, self.path)  # fails when the name exists: the exclusive create
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)
        return True

    def read(self) -> tuple[bytes, str] | None:
        try:
            with open(self.path, "rb") as fh:
                data = fh.read()
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return data, f"{st.st_ino}-{st.st_mtime_ns}"

    def take_over(self, version: str, doc: bytes) -> bool:
        """Replace the dead lock whose version is ``version`` by ``doc``; True when this process holds it now.

        The file is first moved aside (only one taker can move a given file), then checked: a lock that is not
        the dead one (a taker was quicker and a live writer holds it now) is put back.
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
        return self.create(doc)

    def renew(self, doc: bytes, token: str) -> bool:
        """Rewrite the lock with a later lease; False when it is no longer this holder's (taken over)."""
        current = self.read()
        if current is None:  # gone a moment (a taker checking it): try again at the next beat
            raise FileNotFoundError(self.path)
        holder = Holder.parse(current[0])
        if holder is None or holder.token != token:
            return False
        tmp = f"{self.path}.renew-{os.getpid()}"
        with open(tmp, "wb") as fh:
            fh.write(doc)
        os.replace(tmp, self.path)
        return True

    def delete(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def sweep(self, older_than: float) -> None:
        """Delete the side files (``.new-*``, ``.stale-*``, ``.renew-*``) that killed processes left beside the lock,
        once they are older than ``older_than`` seconds (a live process's are gone within milliseconds)."""
        folder, base = os.path.split(os.path.abspath(self.path))
        now = time.time()
        for name in os.listdir(folder or "."):
            if name.startswith(base + ".") and name.rsplit(".", 1)[-1].split("-")[0] in ("new", "stale", "renew"):
                path = os.path.join(folder, name)
                with contextlib.suppress(OSError):
                    if now - os.stat(path).st_mtime > older_than:
                        os.unlink(path)


def _condition_refused(exc: OSError) -> bool:
    """Return True when an S3 error (as s3fs translates it) says a conditional write's condition did not hold:
    412 Precondition Failed (s3fs: FileExistsError for If-None-Match, OSError 22 for If-Match) or 409
    ConditionalRequestConflict (a concurrent conditional write)."""
    cause = exc.__cause__ or exc.__context__
    code = str(getattr(cause, "response", {}).get("Error", {}).get("Code", ""))
    status = getattr(cause, "response", {}).get("ResponseMetadata", {}).get("HTTPStatusCode")
    return isinstance(exc, FileExistsError) or code in ("PreconditionFailed", "ConditionalRequestConflict") \
        or status in (409, 412) or "pre-conditions" in str(exc) or "PreconditionFailed" in repr(exc)


class _ObjectStoreBackend:
    """The lock as an object, written with S3's conditional puts (If-None-Match, If-Match)."""

    def __init__(self, url: str, storage_options: dict | None) -> None:
        import fsspec

        protocol, self.path = url.split("://", 1)
        self.fs = fsspec.filesystem(protocol, **(storage_options or {}))
        self.etag: str | None = None

    def _put(self, doc: bytes, **match) -> bool:
        """Put the lock under the condition ``match``; False when the store refused the condition."""
        from botocore.exceptions import ParamValidationError

        bucket, key, _ = self.fs.split_path(self.path)
        try:
            out = self.fs.call_s3("put_object", Bucket=bucket, Key=key, Body=doc, **match)
        except ParamValidationError as exc:
            raise FlairLakeError(f"this botocore cannot write conditionally ({exc}), which the lake's writer lock "
                                 "needs on an object store; upgrade s3fs and botocore") from None
        except OSError as exc:
            if _condition_refused(exc):
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

    def take_over(self, version: str, doc: bytes) -> bool:
        """Replace the dead lock whose ETag is ``version`` by ``doc``, in one conditional put."""
        return self._put(doc, IfMatch=f'"{version}"')

    def renew(self, doc: bytes, token: str) -> bool:
        """Rewrite the lock with a later lease, only if it is still the version this holder wrote."""
        return self.etag is not None and self._put(doc, IfMatch=f'"{self.etag}"')

    def delete(self) -> None:
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
        """Try to take the lock; return None when this process holds it now, else its live holder.

        Raises:
            LakeBusyError: the lock kept changing hands while this process looked at it.
        """
        for _ in range(50):  # each round: create, or read the holder, or replace a dead one
            if self.backend.create(self._doc()):
                return None
            current = self.backend.read()
            if current is None:  # its holder released it meanwhile: create again
                continue
            holder = Holder.parse(current[0])
            if holder is not None and not holder.dead():
                return holder
            # a dead holder (or a document its holder died writing, on a store that allows that): replace it
            if self.backend.take_over(current[1], self._doc()):
                log.warning("took over the lock of %s from %s", self.lake,
                            holder.describe() if holder else "a holder that died writing it")
                return None
        raise LakeBusyError(f"the lock of {self.lake} ({lock_path(self.lake)}) kept changing hands; run the command "
                            "again")

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
        if isinstance(self.backend, _LocalBackend):
            self.backend.sweep(older_than=self.lease)
        self._thread = threading.Thread(target=self._renew, name="flair-lake lock lease", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        while not self._stop.wait(self.lease / 3):
            try:
                renewed = self.backend.renew(self._doc(), self.token)
            except Exception:  # noqa: BLE001 - a failed renewal (the store away a moment) is retried at the next beat
                log.debug("renewing the lock of %s failed", self.lake, exc_info=True)
                continue
            if not renewed:
                log.error("the lock of %s was taken over by another writer while this one held it (its lease ran "
                          "out); stopping", self.lake)
                _thread.interrupt_main(signal.SIGTERM)  # the command stops as on SIGTERM (a no-op if unhandled)
                return

    def release(self) -> None:
        """Give the lock back (only if this process still holds it)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        current = self.backend.read()
        holder = Holder.parse(current[0]) if current is not None else None
        if holder is not None and holder.token == self.token:
            self.backend.delete()


@contextlib.contextmanager
def writer(lake: str, command: str, *, storage_options: dict | None = None, wait: bool = False):
    """Hold the lake's writer lock for ``command`` within (see :class:`WriterLock`)."""
    lock = WriterLock(lake, command, storage_options=storage_options)
    lock.acquire(wait=wait)
    try:
        yield lock
    finally:
        lock.release()
