"""Writing into a bundle without losing it: every command that writes (export, calibrate, build) stages its new files
under temporary names and commits them together with a new manifest, under the bundle's write lock.

The manifest is the commit point. A new file never overwrites a file the current manifest names (it gets a fresh
name instead), so until the new manifest is renamed into place the old bundle is whole, and after it the new one is;
files only the old manifest named are deleted after the commit. A process killed at any point leaves the old bundle
or the new one, plus temporary files the next writer removes. A second writer waits for the lock a bounded time,
then fails saying who holds it."""

from __future__ import annotations

import ctypes
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from fusionrt.runtime.errors import BundleError
from fusionrt.runtime.manifest import Manifest

__all__ = ["update_bundle", "save_manifest", "BundleUpdate", "StagedFile", "WriteLock", "replace_directory", "TEMP_PREFIX",
           "LOCK_NAME"]

LOCK_NAME = ".fusionrt.lock"
TEMP_PREFIX = ".fusionrt-tmp-"
DEFAULT_TIMEOUT_S = 60.0


def _step(name: str) -> None:
    """A named point of a write (staged, renamed, committed, replaced). Does nothing: tests that kill a writer at
    a given point replace it."""


class WriteLock:
    """An exclusive lock on a bundle folder (flock on its lock file), waited for at most `timeout_s` seconds."""

    def __init__(self, folder: Path, command: str, timeout_s: float | None = None):
        self.folder, self.command = Path(folder), command
        self.timeout_s = DEFAULT_TIMEOUT_S if timeout_s is None else timeout_s
        self._fd = None

    def __enter__(self) -> "WriteLock":
        import fcntl

        path, deadline = self.folder / LOCK_NAME, time.monotonic() + self.timeout_s
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                if time.monotonic() >= deadline:
                    raise BundleError(
                        f"bundle '{self.folder}' is being written by another fusionrt command ({holder}); waited "
                        f"{self.timeout_s:.0f} s for it: expected no other writer. Let that command finish, then run "
                        f"`fusionrt {self.command}` again.") from None
                time.sleep(0.1)
                continue
            try:  # the file may have been replaced (a bundle swapped in by export) while we waited: lock the new one
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}, fusionrt {self.command}, since {time.strftime('%H:%M:%S')}".encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing releases the flock
            self._fd = None


@dataclass(frozen=True)
class StagedFile:
    name: str  # the relative path the new manifest records
    path: Path  # where to write it now (a temporary name, renamed to `name` at commit)


class BundleUpdate:
    """`with update_bundle(bundle, "calibrate") as update:` then `update.manifest` (read under the lock: build the new
    manifest from it, not from an earlier read), `update.stage(name)` per new file, `update.commit(manifest)`.
    Leaving the block without a commit removes the staged files."""

    def __init__(self, bundle, command: str, timeout_s: float | None = None):
        self.bundle, self.root = bundle, Path(bundle.root)
        self._lock = WriteLock(self.root, command, timeout_s)
        self._staged: list = []
        self.manifest: Manifest | None = None

    def __enter__(self) -> "BundleUpdate":
        self._lock.__enter__()
        try:
            self.manifest = Manifest.read(self.root)  # what is committed now, perhaps by the writer we waited for
            for stale in self.root.rglob(f"{TEMP_PREFIX}*"):  # left by a writer that was killed: we hold the lock
                stale.unlink(missing_ok=True)
        except BaseException:
            self._lock.__exit__()
            raise
        return self

    @property
    def current(self):
        """The bundle as committed now (its manifest read under the lock)."""
        return type(self.bundle)(self.root, self.manifest)

    def stage(self, name: str, *companions: str) -> StagedFile | tuple:
        """Where to write the new file meant as `name` (relative). If the current manifest names `name`, the new file
        gets a fresh name (`stem.2.ext`, ...), so the current bundle stays whole until the commit. `companions`: other
        extensions of the same stem, staged under the same fresh stem (an OpenVINO IR's '.bin' beside its '.xml',
        which OpenVINO finds by that stem): then returns one StagedFile per name, `name`'s first."""
        in_use = set(self.manifest.files()) | {s.name for s in self._staged}
        head, dot, ext = name.rpartition(".")
        names = lambda stem: [f"{stem}.{ext}" if dot else stem] + [f"{stem}.{e.lstrip('.')}" for e in companions]
        stem, n = (head if dot else name), 2
        while any(f in in_use for f in names(stem)):
            stem = f"{head if dot else name}.{n}"
            n += 1
        staged = []
        for final in names(stem):
            target = self.bundle.path_of(final)
            target.parent.mkdir(parents=True, exist_ok=True)
            staged.append(StagedFile(final, target.with_name(f"{TEMP_PREFIX}{target.name}")))
        self._staged += staged
        return tuple(staged) if companions else staged[0]

    def commit(self, manifest: Manifest):
        """Move the staged files to their names, then write `manifest` (the commit point), then delete the files only
        the old manifest named. Returns the updated Bundle."""
        missing = [s.name for s in self._staged if not s.path.is_file()]
        if missing:
            raise BundleError(f"bundle update: staged files {missing} were never written; nothing was committed.")
        for staged in self._staged:
            _fsync(staged.path)
        _step("staged")
        for staged in self._staged:
            os.replace(staged.path, self.root / staged.name)
        _fsync_dir(self.root)
        _step("renamed")
        manifest.write(self.root)
        _step("committed")
        old, new = set(self.manifest.files()), set(manifest.files())
        for relative in sorted(old - new):
            (self.root / relative).unlink(missing_ok=True)
        self._staged, self.manifest = [], manifest
        return type(self.bundle)(self.root, manifest)

    def __exit__(self, *exc) -> None:
        try:
            for staged in self._staged:  # not committed: nothing of this update stays
                staged.path.unlink(missing_ok=True)
            self._staged = []
        finally:
            self._lock.__exit__()


def replace_directory(new: Path, target: Path) -> None:
    """Put the folder `new` at `target`, whose current content (a bundle) it replaces: an atomic exchange where the
    OS has one (Linux renameat2), else old renamed aside, new renamed in; then the old content is deleted."""
    new, target = Path(new), Path(target)
    if not target.exists() or (target.is_dir() and not any(target.iterdir())):
        os.replace(new, target)  # POSIX replaces an empty folder in one rename
        return
    _step("staged")
    if _exchange(new, target):
        _step("replaced")
        shutil.rmtree(new)  # `new` now holds the old bundle
        return
    aside = target.with_name(f"{TEMP_PREFIX}{target.name}.old-{os.getpid()}")
    os.rename(target, aside)
    os.rename(new, target)
    _step("replaced")
    shutil.rmtree(aside)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (renameat2 with RENAME_EXCHANGE); False where the OS or file system has no such call."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    try:
        _fsync(path)
    except OSError:  # some file systems cannot sync a folder; the renames are still atomic
        pass


def update_bundle(bundle, command: str, timeout_s: float | None = None) -> BundleUpdate:
    """A BundleUpdate of `bundle` (a runtime Bundle): new files staged under temporary names, committed together with
    a new manifest under the bundle's write lock."""
    return BundleUpdate(bundle, command, timeout_s)


def save_manifest(bundle, manifest: Manifest):
    """Commit `manifest` alone (its files already in place), under the write lock; returns the new Bundle."""
    with update_bundle(bundle, "save") as update:
        return update.commit(manifest)
