"""Reading a cache volume that someone else may have written (stdlib only).

A cache on a hostPath or a PVC is shared: whatever another pod, or a person with access to
the volume, left there is input, not fact. A manifest names files by path; such a path is
used only when it is relative, already normalised, under ``triton/``, ``flashinfer/`` or
``flashinfer-jit/`` (FlashInfer's JIT modules),
and reaches a regular file without passing a symlink. Files are opened with
``O_NOFOLLOW | O_NONBLOCK`` component by component from the cache root (``openat``), so
a symlink, a device, a FIFO or a folder where a file should be is refused without being
followed, read or waited on. A refusal is an ``UnsafePath``: the caller then treats the
manifest as damaged (cold), never as a list of things to read or delete.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
from pathlib import Path
from typing import Iterator, Optional

# The only top-level folders a manifest may name files in (CacheLayout.TRITON, FLASHINFER,
# and the folders the engine phase's server writes, SERVER_DIRS). A JIT module is 8 deep:
# flashinfer-jit/.cache/flashinfer/<version>/<arch>/cached_ops/<module>/<module>.so; vLLM's
# AOT compile cache goes deeper (vllm/torch_compile_cache/torch_aot_compile/<hash>/
# inductor_cache/<2 levels>/<file>); MAX_DEPTH admits both, the engine phase walks 16.
ENTRY_ROOTS = ("triton", "flashinfer", "flashinfer-jit", "vllm", "inductor", "cuda")
MAX_REL_PATH = 1024
MAX_DEPTH = 18
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | getattr(os, "O_CLOEXEC", 0)


class UnsafePath(ValueError):
    """A path from the cache volume that must not be used; the message says why."""


def check_relpath(rel: object, roots: tuple[str, ...] = ENTRY_ROOTS) -> str:
    """``rel`` if it is a clean relative path under one of ``roots``, else UnsafePath."""
    if not isinstance(rel, str) or not rel:
        raise UnsafePath(f"entry path {rel!r:.80} is not a non-empty string")
    if len(rel) > MAX_REL_PATH or "\x00" in rel or "\\" in rel:
        raise UnsafePath(f"entry path {rel[:80]!r} is too long or holds NUL/backslash")
    if rel.startswith("/"):
        raise UnsafePath(f"entry path {rel[:80]!r} is absolute; manifest paths are relative to the cache")
    parts = rel.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise UnsafePath(f"entry path {rel[:80]!r} is not normalised (empty, '.' or '..' part)")
    if len(parts) > MAX_DEPTH or parts[0] not in roots or len(parts) < 2:
        raise UnsafePath(f"entry path {rel[:80]!r} is not a file under {' or '.join(r + '/' for r in roots)}")
    return rel


@contextlib.contextmanager
def open_dir(root: Path, parts: list[str]) -> Iterator[int]:
    """An fd for ``root/parts...``, every part opened without following a symlink."""
    fds = [os.open(root, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))]
    try:
        for part in parts:
            try:
                fds.append(os.open(part, _DIR_FLAGS, dir_fd=fds[-1]))
            except OSError as exc:
                raise _unsafe_or_missing(exc, part) from None
        yield fds[-1]
    finally:
        for fd in fds:
            os.close(fd)


def _unsafe_or_missing(exc: OSError, part: str) -> OSError:
    import errno
    if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
        return UnsafePath(f"{part!r} is a symlink or not a folder")
    return exc


@contextlib.contextmanager
def open_regular(root: Path, rel: str) -> Iterator[int]:
    """A read fd for the regular file ``root/rel`` (rel already checked); UnsafePath for
    a symlink, device, FIFO, socket or folder; OSError (e.g. ENOENT) when absent."""
    *dirs, name = rel.split("/")
    with open_dir(root, dirs) as dfd:
        try:
            fd = os.open(name, _FILE_FLAGS, dir_fd=dfd)
        except OSError as exc:
            raise _unsafe_or_missing(exc, rel) from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise UnsafePath(f"{rel!r} is not a regular file")
            yield fd
        finally:
            os.close(fd)


def sha256_and_size(root: Path, rel: str, limit: int) -> tuple[str, int]:
    """sha256 and size of ``root/rel``, reading at most ``limit`` + 1 bytes."""
    h = hashlib.sha256()
    size = 0
    with open_regular(root, rel) as fd:
        while size <= limit:
            chunk = os.read(fd, min(1 << 20, limit + 1 - size))
            if not chunk:
                break
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def read_small(root: Path, rel: str, limit: int) -> bytes:
    """The bytes of the regular file ``root/rel``; UnsafePath when over ``limit``."""
    with open_regular(root, rel) as fd:
        data = os.read(fd, limit + 1)
        while len(data) <= limit:
            more = os.read(fd, limit + 1 - len(data))
            if not more:
                break
            data += more
    if len(data) > limit:
        raise UnsafePath(f"{rel!r} is over {limit} bytes")
    return data


def remove_in(root: Path, rel: str) -> bool:
    """Remove ``root/rel`` (a file, a symlink itself, or a folder tree) without following
    a symlink on the way; True if something was removed."""
    import shutil

    *dirs, name = rel.split("/")
    try:
        with open_dir(root, dirs) as dfd:
            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                shutil.rmtree(name, dir_fd=dfd)  # fd-based: never follows a symlink inside
            else:
                os.unlink(name, dir_fd=dfd)
    except FileNotFoundError:
        return False
    return True


def regular_files(root: Path, rel_dir: str, depth: int = 1) -> Iterator[tuple[str, os.stat_result]]:
    """(relative path, lstat) of the regular files under ``root/rel_dir`` at most ``depth``
    folders down (Triton's cache is ``<hash>/<file>``: depth 1); symlinks and anything
    deeper are skipped, so a hostile tree can neither redirect nor exhaust the walk."""
    stack: list[tuple[str, int]] = [(rel_dir, 0)]
    while stack:
        rel, level = stack.pop()
        try:
            with os.scandir(root / rel) as it:
                entries = list(it)
        except OSError:
            continue
        for e in entries:
            sub = f"{rel}/{e.name}"
            try:
                st = e.stat(follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                yield sub, st
            elif stat.S_ISDIR(st.st_mode) and level < depth:
                stack.append((sub, level + 1))


def real_dir(path: Path) -> bool:
    """Whether ``path`` is a folder itself (not a symlink to one)."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def ensure_real_dir(path: Path) -> Optional[str]:
    """Make ``path`` a real folder: a symlink, file or FIFO in its place is removed (never
    followed). Returns what was replaced, for the log."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        path.mkdir(parents=True, exist_ok=True)
        return None
    if stat.S_ISDIR(st.st_mode):
        return None
    os.unlink(path)
    path.mkdir()
    return f"{path.name} was a {'symlink' if stat.S_ISLNK(st.st_mode) else 'non-folder'}; replaced by a folder"


