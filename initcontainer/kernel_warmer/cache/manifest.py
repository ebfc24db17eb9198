"""Manifests: the record, written last, that a plan is warm for an environment.

``<cache>/manifests/<key>.json`` lists every file the run relied on with its sha256. The
key hashes the plan (what to warm) with the environment key (who will read it), so any
change to either is a different manifest. Verification re-hashes the files: a missing,
truncated or altered file means "cold", never a crash, and ``repair`` removes the damaged
Triton entries so the next run rebuilds them instead of trusting them.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

from kernel_warmer.cache.volume import CacheLayout
from kernel_warmer.files import atomic_write_bytes, sha256_file

SCHEMA = 1


def manifest_key(plan_doc: dict[str, Any], env_doc: dict[str, Any]) -> str:
    blob = json.dumps({"schema": SCHEMA, "plan": plan_doc, "env": env_doc}, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:32]


@dataclass(frozen=True)
class FileEntry:
    path: str  # relative to the cache root
    sha256: str
    size: int

    def to_dict(self) -> dict:
        return {"path": self.path, "sha256": self.sha256, "size": self.size}


@dataclass(frozen=True)
class Verdict:
    warm: bool
    reason: str
    bad_files: list[str] = field(default_factory=list)  # relative paths that failed


def file_entries(layout: CacheLayout, paths: Iterable[Path | str]) -> list[FileEntry]:
    """Checksums of files under the cache root (paths outside it are a bug: refused)."""
    root = layout.root.resolve()
    out: dict[str, FileEntry] = {}
    for p in paths:
        full = Path(p).resolve()
        rel = full.relative_to(root).as_posix()
        out[rel] = FileEntry(rel, sha256_file(full), full.stat().st_size)
    return [out[k] for k in sorted(out)]


def write_manifest(layout: CacheLayout, key: str, plan_doc: dict, env_doc: dict,
                   files: list[FileEntry], summary: dict) -> Path:
    doc = {
        "schema": SCHEMA,
        "key": key,
        "createdAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "plan": plan_doc,
        "env": env_doc,
        "files": [f.to_dict() for f in files],
        "summary": summary,
    }
    path = layout.manifest_path(key)
    atomic_write_bytes(path, json.dumps(doc, sort_keys=True, indent=1).encode())
    return path


def read_manifest(layout: CacheLayout, key: str) -> Optional[dict]:
    try:
        doc = json.loads(layout.manifest_path(key).read_bytes())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def verify(layout: CacheLayout, key: str) -> Verdict:
    """Warm only when the manifest exists, names this key, and every file checks out."""
    path = layout.manifest_path(key)
    if not path.exists():
        return Verdict(False, "no manifest for this plan and environment")
    doc = read_manifest(layout, key)
    if doc is None or doc.get("key") != key or not isinstance(doc.get("files"), list):
        return Verdict(False, f"manifest {path.name} is unreadable or not for this key")
    bad = []
    for entry in doc["files"]:
        try:
            rel, digest, size = entry["path"], entry["sha256"], int(entry["size"])
        except (KeyError, TypeError, ValueError):
            return Verdict(False, f"manifest {path.name} has a malformed file entry")
        full = layout.root / rel
        try:
            if full.stat().st_size != size or sha256_file(full) != digest:
                bad.append(rel)
        except OSError:
            bad.append(rel)
    if bad:
        return Verdict(False, f"{len(bad)} cached file(s) missing or altered, e.g. {bad[0]}", bad)
    return Verdict(True, f"manifest {path.name}: {len(doc['files'])} file(s) verified")


def repair(layout: CacheLayout, key: str, bad_files: list[str]) -> list[str]:
    """Remove what a failed verification found, so Triton rebuilds instead of loading it.

    A Triton entry is a folder of files named by its hash; one bad file condemns the folder.
    The stale manifest goes too. Returns what was removed (relative paths)."""
    removed = []
    triton = layout.triton_dir.resolve()
    for rel in bad_files:
        full = (layout.root / rel).resolve()
        target = full.parent if full.parent.parent == triton else full
        if target.is_dir():
            shutil.rmtree(target, ignore_errors=True)
        elif target.exists():
            target.unlink()
        removed.append(target.relative_to(layout.root.resolve()).as_posix())
    manifest = layout.manifest_path(key)
    if manifest.exists():
        manifest.unlink()
        removed.append(manifest.relative_to(layout.root).as_posix())
    return sorted(set(removed))


def snapshot(directory: Path) -> dict[str, tuple[int, int]]:
    """Files under ``directory`` -> (size, mtime_ns); the run diffs two of these to find
    what it wrote besides the kernels (Triton's launcher modules)."""
    out = {}
    if not directory.exists():
        return out
    for p in directory.rglob("*"):
        if p.is_file() and not p.name.startswith("."):
            st = p.stat()
            out[str(p)] = (st.st_size, st.st_mtime_ns)
    return out
