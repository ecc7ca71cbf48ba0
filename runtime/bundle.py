"""A bundle directory: its manifest plus the files it names, each inside the bundle and checked against its sha256.

Every path the manifest names must be relative and stay inside the bundle once resolved (no '..', no absolute path,
no symlink out of it): a bundle copied from a shared drive or a USB stick loads only what it promises. `read` gives a
file's bytes read once, hashed, and those very bytes go to the engine (nothing is read twice)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

from fusionrt.runtime.errors import BundleError
from fusionrt.runtime.manifest import Manifest, sha256_of

__all__ = ["Bundle"]


@dataclass(frozen=True)
class Bundle:
    root: Path
    manifest: Manifest

    @classmethod
    def open(cls, path) -> "Bundle":
        root = Path(path)
        if not root.is_dir():
            raise BundleError(
                f"bundle directory '{root}' does not exist: expected the folder `fusionrt export --out` wrote. Check the path."
            )
        bundle = cls(root, Manifest.read(root))
        for relative in bundle.manifest.files():
            bundle.path_of(relative)  # containment, for every entry, before anything is read
        return bundle

    def path_of(self, relative: str) -> Path:
        """The path of a manifest entry; BundleError when the entry is absolute or leaves the bundle (by '..' or a
        symlink)."""
        if not isinstance(relative, str) or not relative or PurePosixPath(relative).is_absolute() or \
                PureWindowsPath(relative).is_absolute() or PureWindowsPath(relative).drive or \
                ".." in PurePosixPath(relative.replace("\\", "/")).parts:
            raise BundleError(f"manifest entry '{relative}' in {self.root}/manifest.json is not a path inside the "
                              "bundle: expected a relative path without '..'. Re-export the bundle, or fix the entry.")
        path = self.root / relative
        root = self.root.resolve()
        resolved = path.resolve()
        if resolved != root and root not in resolved.parents:
            raise BundleError(f"manifest entry '{relative}' in {self.root}/manifest.json resolves to '{resolved}', "
                              "outside the bundle (a symlink out of it?): expected a file inside the bundle. Copy the "
                              "file into the bundle in place of the link, or re-export.")
        return path

    def _expected_sha(self, relative: str, sha256: str | None) -> str | None:
        return sha256 if sha256 is not None else self.manifest.files().get(relative)

    def file(self, relative: str, sha256: str | None = None, verify: bool = True) -> Path:
        """The path of a bundle file, checked: inside the bundle, present and (unless verify=False) matching its
        sha256 (`sha256`, else the manifest's record of that file). For tools that take a path; engines get
        `read`'s bytes."""
        path = self._present(relative)
        expected = self._expected_sha(relative, sha256) if verify else None
        if expected is not None and sha256_of(path) != expected:
            raise self._mismatch(relative)
        return path

    def read(self, relative: str, sha256: str | None = None, verify: bool = True) -> bytes:
        """A bundle file's bytes, read once; unless verify=False, those bytes match its sha256 (as for `file`)."""
        data = self._present(relative).read_bytes()
        expected = self._expected_sha(relative, sha256) if verify else None
        if expected is not None and hashlib.sha256(data).hexdigest() != expected:
            raise self._mismatch(relative)
        return data

    def _present(self, relative: str) -> Path:
        path = self.path_of(relative)
        if not path.is_file():
            raise BundleError(
                f"bundle file '{relative}' named in {self.root}/manifest.json is missing. "
                "Copy the whole bundle directory, or re-run the step that writes it (export, calibrate or build)."
            )
        return path

    def _mismatch(self, relative: str) -> BundleError:
        return BundleError(
            f"bundle file '{relative}' does not match the sha256 in manifest.json (changed or corrupted). "
            "Re-run the step that writes it (export, calibrate or build)."
        )

    def verify(self) -> dict:
        """Check every file named in the manifest; returns relative path -> 'ok'; raises on the first bad one."""
        return {rel: (self.file(rel, sha) and "ok") for rel, sha in self.manifest.files().items()}
