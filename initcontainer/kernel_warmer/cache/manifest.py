"""Manifests: the record, written last, that a plan is warm for an environment.

``<cache>/manifests/<key>.json`` lists every file the run relied on with its sha256. The
key hashes the plan (what to warm) with the environment key (who will read it), so any
change to either is a different manifest. Verification re-hashes the files: a missing,
truncated or altered file means "cold", never a crash, and ``repair`` removes the damaged
Triton entries so the next run rebuilds them instead of trusting them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

from kernel_warmer.cache.volume import CacheLayout
from kernel_warmer.cache.untrusted import (
    UnsafePath,
    check_relpath,
    read_small,
    regular_files,
    remove_in,
    sha256_and_size,
)
from kernel_warmer.files import atomic_write_bytes

SCHEMA = 1
MAX_CACHE_FILE_BYTES = 1 << 36  # far above any kernel or tactic file


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
    damaged: bool = False  # the manifest itself is unusable (repair removes it)


def file_entries(layout: CacheLayout, paths: Iterable[Path | str]) -> list[FileEntry]:
    """Checksums of files this run wrote under the cache root, taken the way ``verify``
    reads them (no symlinks, regular files only); anything else is refused (UnsafePath)."""
    root = layout.root.absolute()
    out: dict[str, FileEntry] = {}
    for p in paths:
        rel = check_relpath(os.path.relpath(os.path.normpath(Path(p).absolute()), os.path.normpath(root)))
        digest, size = sha256_and_size(root, rel, MAX_CACHE_FILE_BYTES)
        out[rel] = FileEntry(rel, digest, size)
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


MAX_MANIFEST_BYTES = 16 << 20
MAX_GROUP_BYTES = 1 << 16
GROUP_PREFIX = "__grp__"  # Triton's group files: {"child_paths": {name: absolute path}}


def read_manifest(layout: CacheLayout, key: str) -> Optional[dict]:
    """The manifest as a dict; None when absent, unreadable, not a regular file (a folder,
    a symlink, a FIFO in its place), too big or too deeply nested."""
    try:
        raw = read_small(layout.root, f"{CacheLayout.MANIFESTS}/{key}.json", MAX_MANIFEST_BYTES)
        doc = json.loads(raw)
    except (OSError, ValueError, RecursionError):  # UnsafePath is a ValueError
        return None
    return doc if isinstance(doc, dict) else None


def verify(layout: CacheLayout, key: str) -> Verdict:
    """Warm only when the manifest exists, names this key, and every file checks out."""
    path = layout.manifest_path(key)
    if not os.path.lexists(path):
        return Verdict(False, "no manifest for this plan and environment")
    doc = read_manifest(layout, key)
    if doc is None or doc.get("key") != key or not isinstance(doc.get("files"), list):
        return Verdict(False, f"manifest {path.name} is unreadable or not for this key", damaged=True)
    bad = []
    for entry in doc["files"]:
        try:
            rel, digest, size = check_entry(entry)
            if not _file_matches(layout, rel, digest, size):
                bad.append(rel)
        except UnsafePath as exc:
            return Verdict(False, f"manifest {path.name} is damaged: {exc}", damaged=True)
    if bad:
        return Verdict(False, f"{len(bad)} cached file(s) missing, altered or for another path, e.g. {bad[0]}", bad)
    return Verdict(True, f"manifest {path.name}: {len(doc['files'])} file(s) verified")


def check_entry(entry: Any) -> tuple[str, str, int]:
    """(path, sha256, size) of a manifest entry, or UnsafePath saying what is wrong."""
    if not isinstance(entry, dict):
        raise UnsafePath("a file entry is not an object")
    digest, size = entry.get("sha256"), entry.get("size")
    if not isinstance(digest, str) or isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise UnsafePath("a file entry has no valid sha256/size")
    return check_relpath(entry.get("path")), digest, size


def _file_matches(layout: CacheLayout, rel: str, digest: str, size: int) -> bool:
    """The file is there, a regular file, with this size and sha256, and (a Triton group
    file) names children in this very cache folder. UnsafePath propagates."""
    try:
        got, got_size = sha256_and_size(layout.root, rel, size)
    except FileNotFoundError:
        return False
    except OSError:
        return False
    if got_size != size or got != digest:
        return False
    return not is_group_file(rel) or group_points_here(layout, rel)


def is_group_file(rel: str) -> bool:
    name = rel.rsplit("/", 1)[-1]
    return rel.startswith(CacheLayout.TRITON + "/") and name.startswith(GROUP_PREFIX) and name.endswith(".json")


def group_points_here(layout: CacheLayout, rel: str) -> bool:
    """Triton's group files hold absolute paths: one written at another mount path (a
    cache copied, or shared by pods that mount it elsewhere) sends Triton to files that
    are not these. Such a group is a miss, however good its checksum."""
    try:
        doc = json.loads(read_small(layout.root, rel, MAX_GROUP_BYTES))
    except (OSError, ValueError, RecursionError):
        return False
    children = doc.get("child_paths") if isinstance(doc, dict) else None
    if not isinstance(children, dict):
        return False
    here = os.path.normpath(str(layout.root / rel.rsplit("/", 1)[0]))
    return all(isinstance(p, str) and os.path.dirname(os.path.normpath(p)) == here for p in children.values())


def repair(layout: CacheLayout, key: str, bad_files: list[str]) -> list[str]:
    """Remove what a failed verification found, so Triton rebuilds instead of loading it.

    A Triton entry is a folder of files named by its hash; one bad file condemns the folder.
    The stale manifest goes too, whatever sits at its path (a folder, a symlink: the link
    itself). Only checked relative paths are touched, never through a symlink. Returns
    what was removed (relative paths)."""
    removed = []
    for rel in bad_files:
        try:
            rel = check_relpath(rel)
        except UnsafePath:
            continue  # verify never reports one; refuse rather than delete it
        parts = rel.split("/")
        target = "/".join(parts[:2]) if parts[0] == CacheLayout.TRITON and len(parts) == 3 else rel
        try:
            if remove_in(layout.root, target):
                removed.append(target)
        except (OSError, UnsafePath):
            continue
    manifest = f"{CacheLayout.MANIFESTS}/{key}.json"
    with contextlib.suppress(OSError, UnsafePath):
        if remove_in(layout.root, manifest):
            removed.append(manifest)
    return sorted(set(removed))


def snapshot(directory: Path) -> dict[str, tuple[int, int]]:
    """Regular files of a Triton cache folder (``<hash>/<file>``) -> (size, mtime_ns); the
    run diffs two of these to find what it wrote besides the kernels (Triton's launcher
    modules). Symlinks and deeper levels are skipped (``regular_files``)."""
    return {str(directory / rel[2:]): (st.st_size, st.st_mtime_ns)
            for rel, st in regular_files(directory, ".", depth=1) if not rel.rsplit("/", 1)[-1].startswith(".")}
