"""Writing bundles: files staged and committed with a new manifest under the bundle's write lock (export, calibrate,
build and tools that edit a manifest). The runtime only reads bundles."""

from fusionrt.bundling.staging import save_manifest, update_bundle

__all__ = ["update_bundle", "save_manifest"]
