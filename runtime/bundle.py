"""A bundle directory: its manifest plus the files it names, checked against their sha256."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

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
        return cls(root, Manifest.read(root))

    def file(self, relative: str, sha256: str | None = None) -> Path:
        """The absolute path of a bundle file; checks it exists and, when given, its sha256."""
        path = self.root / relative
        if not path.is_file():
            raise BundleError(
                f"bundle file '{relative}' named in {self.root}/manifest.json is missing. "
                "Copy the whole bundle directory, or re-run the step that writes it (export, calibrate or build)."
            )
        if sha256 is not None and sha256_of(path) != sha256:
            raise BundleError(
                f"bundle file '{relative}' does not match the sha256 in manifest.json (changed or corrupted). "
                "Re-run the step that writes it (export, calibrate or build)."
            )
        return path

    def verify(self) -> dict:
        """Check every file named in the manifest; returns relative path -> 'ok'; raises on the first bad one."""
        return {rel: (self.file(rel, sha) and "ok") for rel, sha in self.manifest.files().items()}

    def save(self, manifest: Manifest) -> "Bundle":
        manifest.write(self.root)
        return Bundle(self.root, manifest)
