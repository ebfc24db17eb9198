#!/usr/bin/env python3
"""Build the kernel-warmup image as an OCI archive without a Docker engine, and check it.

    build_image.py build             make image: build/kernel-warmup-<version>.oci.tar
    build_image.py test [--if-ready] make image-test: build if needed, then run the image
    build_image.py base              only the cached Debian base rootfs

No base image can be pulled here, so the base is a Debian rootfs made by ``debootstrap``
(minbase + python3, cached under ``$KERNEL_WARMUP_CACHE/image/``). The install steps are
``image/install.sh``, the same script the Dockerfile runs; the image config (ENV, USER,
EXPOSE, CMD) is read from the Dockerfile's last stage, so the two builds cannot drift.
``umoci`` writes the OCI layout, ``podman`` runs the result. Needs root (debootstrap,
chroot). Stdlib only.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "devcluster"))
import heartbeat  # noqa: E402  (stdlib-only helper shared with devcluster.py)

SUITE = "bookworm"
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")
# What the Dockerfile's build stage COPYs into /src: the same files go into the rootfs.
SOURCES = ("pyproject.toml", "README.md", "operator", "initcontainer", "image/install.sh")
# binary -> the Debian package that has it
TOOLS = {"debootstrap": "debootstrap", "umoci": "umoci", "podman": "podman", "runc": "runc", "unshare": "util-linux"}
# Left out of the image: Debian's docs and package lists, nothing a program reads.
TRIM = ("usr/share/doc", "usr/share/man", "usr/share/info", "var/lib/apt/lists", "var/cache/apt", "var/log")


class ImageError(RuntimeError):
    pass


def say(msg: str) -> None:
    print(f"[image] {msg}", file=sys.stderr, flush=True)


def cache_root() -> Path:
    return Path(os.environ.get("KERNEL_WARMUP_CACHE", Path.home() / ".cache" / "kernel-warmup"))


def version() -> str:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def archive_path() -> Path:
    return ROOT / "build" / f"kernel-warmup-{version()}.oci.tar"


# --- what is missing --------------------------------------------------------------------


def not_ready() -> str:
    """Why the image cannot be built and run here, or "" when it can."""
    missing = [f"{b} (apt-get install {p})" for b, p in TOOLS.items() if shutil.which(b) is None]
    if missing:
        return "missing tools: " + ", ".join(missing)
    if os.geteuid() != 0:
        return "needs root (debootstrap and chroot build the rootfs)"
    return ""


def base_dir() -> Path:
    key = hashlib.sha256(f"{SUITE} minbase {','.join(BASE_PACKAGES)}".encode()).hexdigest()[:12]
    return cache_root() / "image" / f"base-{SUITE}-{key}"


def base_cached() -> bool:
    return (base_dir() / ".complete").is_file()


# --- the Debian base ----------------------------------------------------------------------


def ensure_base() -> Path:
    """``debootstrap --variant=minbase`` with python3, once (cached; ~4 min, ~280 MB)."""
    out = base_dir()
    if base_cached():
        return out / "rootfs"
    mirror = os.environ.get("KERNEL_WARMUP_DEBIAN_MIRROR", "http://deb.debian.org/debian")
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    cmd = ["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", SUITE,
           str(tmp / "rootfs"), mirror]
    say(f"first run: a Debian {SUITE} base rootfs with {', '.join(BASE_PACKAGES)} from {mirror} into {out}")
    try:
        heartbeat.run(cmd, f"Running debootstrap {SUITE}", say=say, env=_quiet_env())
    except subprocess.CalledProcessError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ImageError(f"debootstrap failed (exit {exc.returncode}): {' '.join(cmd)}; "
                         f"its log: {tmp / 'rootfs/debootstrap/debootstrap.log'}") from None
    (tmp / ".complete").write_text(" ".join(cmd) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out / "rootfs"


def _quiet_env() -> dict[str, str]:
    return {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LANG": "C.UTF-8"}


# --- the image config, read from the Dockerfile ---------------------------------------------


@dataclass(frozen=True)
class ImageConfig:
    env: tuple[str, ...]
    user: str
    ports: tuple[str, ...]
    cmd: tuple[str, ...]


def image_config(dockerfile: str) -> ImageConfig:
    """ENV, USER, EXPOSE and CMD of the Dockerfile's last stage (one line each)."""
    lines = [ln.strip() for ln in dockerfile.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    starts = [i for i, ln in enumerate(lines) if ln.upper().startswith("FROM ")]
    if not starts:
        raise ImageError("Dockerfile: no FROM line")
    env: list[str] = []
    user, ports, cmd = "", [], []
    for ln in lines[starts[-1] + 1:]:
        op, _, rest = ln.partition(" ")
        op = op.upper()
        if op == "ENV":
            env.extend(rest.split())
        elif op == "USER":
            user = rest.strip()
        elif op == "EXPOSE":
            ports.extend(p if "/" in p else f"{p}/tcp" for p in rest.split())
        elif op == "CMD":
            cmd = json.loads(rest)
    bad = [e for e in env if "=" not in e]
    if bad or not user or not cmd:
        raise ImageError(f"Dockerfile's last stage: need ENV K=V ..., USER and an exec-form CMD on one line each "
                         f"(got ENV {env}, USER {user!r}, CMD {cmd})")
    return ImageConfig(tuple(env), user, tuple(ports), tuple(cmd))


def dockerfile_config() -> ImageConfig:
    return image_config((ROOT / "Dockerfile").read_text())


# --- the rootfs: base + image/install.sh ------------------------------------------------------


def copy_sources(dest: Path) -> None:
    for rel in SOURCES:
        src, dst = ROOT / rel, dest / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
        else:
            shutil.copy2(src, dst)


def chroot_env(rootfs: Path) -> dict[str, str]:
    """A clean env for the install, plus the host's pip index and CA settings (a mirror or
    a proxy CA the Debian rootfs would not know)."""
    env = _quiet_env()
    for k in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_TRUSTED_HOST", "PIP_DEFAULT_TIMEOUT",
              "http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY"):
        if os.environ.get(k):
            env[k] = os.environ[k]
    ca = Path(os.environ.get("PIP_CERT") or "/etc/ssl/certs/ca-certificates.crt")
    if ca.is_file():
        shutil.copy(ca, rootfs / "tmp" / "host-ca.crt")
        env["PIP_CERT"] = "/tmp/host-ca.crt"
    return env


def run_install(rootfs: Path) -> None:
    """image/install.sh inside the rootfs: chroot, with its own /proc in a private mount namespace."""
    copy_sources(rootfs / "src")
    shutil.copy("/etc/resolv.conf", rootfs / "etc" / "resolv.conf")
    env = chroot_env(rootfs)
    cmd = ["unshare", "--mount", "--pid", "--fork", f"--mount-proc={rootfs / 'proc'}",
           "chroot", str(rootfs), "/bin/sh", "/src/image/install.sh", "/src"]
    try:
        heartbeat.run(cmd, "Running image/install.sh in the rootfs (pip install .[operator])", env=env, say=say)
    except subprocess.CalledProcessError as exc:
        raise ImageError(f"image/install.sh failed in the rootfs (exit {exc.returncode}): {' '.join(cmd)}") from None
    for rel in ("src", "tmp/host-ca.crt", *TRIM):
        p = rootfs / rel
        if p.is_dir():
            shutil.rmtree(p)
            if rel in TRIM:
                p.mkdir(mode=0o755)  # emptied, not removed: apt and dpkg expect the folders
        elif p.exists():
            p.unlink()
    (rootfs / "etc" / "resolv.conf").write_text("")  # the runtime mounts its own


def stage_rootfs(work: Path) -> Path:
    base = ensure_base()
    rootfs = work / "rootfs"
    say(f"copying the base rootfs {base}")
    subprocess.run(["cp", "-a", str(base), str(rootfs)], check=True)
    run_install(rootfs)
    return rootfs


# --- the OCI archive ------------------------------------------------------------------------------


def umoci(*args: str) -> None:
    r = subprocess.run(["umoci", *args], capture_output=True, text=True)
    if r.returncode != 0:
        raise ImageError(f"umoci {' '.join(args)} failed (exit {r.returncode}): {r.stderr.strip()}")


def config_args(cfg: ImageConfig) -> list[str]:
    args = ["--clear=config.env", "--clear=config.cmd", "--clear=config.entrypoint",
            f"--config.user={cfg.user}", "--config.workingdir=/",
            "--author=kernel-warmup (scripts/build_image.py)"]
    args += [f"--config.env={e}" for e in cfg.env]
    args += [f"--config.cmd={c}" for c in cfg.cmd]
    args += [f"--config.exposedports={p}" for p in cfg.ports]
    return args


def write_archive(rootfs: Path, work: Path, out: Path) -> None:
    """The rootfs as one layer of an OCI image (umoci), tarred into an OCI archive."""
    layout, bundle, image = work / "layout", work / "bundle", f"{work / 'layout'}:{version()}"
    umoci("init", "--layout", str(layout))
    umoci("new", "--image", image)
    umoci("unpack", "--image", image, str(bundle))
    (bundle / "rootfs").rmdir()
    os.replace(rootfs, bundle / "rootfs")
    heartbeat.run(["umoci", "repack", "--image", image, str(bundle)], "Packing the rootfs into a layer (umoci repack)",
                  say=say)
    umoci("config", "--image", image, *config_args(dockerfile_config()))
    umoci("gc", "--layout", str(layout))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with tarfile.open(tmp, "w") as tf:
        for p in sorted(layout.iterdir()):
            tf.add(p, arcname=p.name)
    os.replace(tmp, out)


def inputs_key() -> str:
    """Hash of everything the image is made from: a change rebuilds it."""
    h = hashlib.sha256(base_dir().name.encode())
    files = [ROOT / "Dockerfile", Path(__file__).resolve()]
    for rel in SOURCES:
        p = ROOT / rel
        files += sorted(f for f in p.rglob("*") if f.is_file() and "__pycache__" not in f.parts
                        and not any(x.endswith(".egg-info") for x in f.parts)) if p.is_dir() else [p]
    for f in files:
        h.update(f.relative_to(ROOT).as_posix().encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


def build() -> Path:
    out, key = archive_path(), inputs_key()
    stamp = out.with_name(out.name + ".key")
    if out.is_file() and stamp.is_file() and stamp.read_text().strip() == key:
        say(f"{out} is up to date (inputs {key})")
        return out
    start = time.monotonic()
    work_parent = cache_root() / "image"
    work_parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="work-", dir=work_parent) as tmp:
        rootfs = stage_rootfs(Path(tmp))
        write_archive(rootfs, Path(tmp), out)
    stamp.write_text(key + "\n")
    say(f"built {out} ({out.stat().st_size / 2**20:.0f} MiB) in {time.monotonic() - start:.0f}s")
    return out


# --- image-test: run it -------------------------------------------------------------------------


def podman(store: Path, *args: str) -> subprocess.CompletedProcess:
    """podman with a private store that goes away after the test. vfs: no overlay mounts
    needed; runc and cgroupfs: crun refuses a hybrid cgroup hierarchy (as on this kind of
    machine); ``run`` gets explicit ulimits because podman's defaults raise RLIMIT_NOFILE
    and RLIMIT_NPROC above the hard limits, which needs CAP_SYS_RESOURCE."""
    argv = ["podman", f"--root={store / 'root'}", f"--runroot={store / 'run'}", "--storage-driver=vfs",
            "--runtime=runc", "--cgroup-manager=cgroupfs", "--events-backend=file", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=300)


def run_in_image(store: Path, image: str, *cmd: str, volume: str = "") -> subprocess.CompletedProcess:
    """``cmd`` in the image as the chart runs it: read-only root, /tmp writable, no network."""
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    nproc = min(resource.getrlimit(resource.RLIMIT_NPROC)[0], 4096)
    args = ["run", "--rm", "--network=none", "--read-only", "--tmpfs=/tmp",
            f"--ulimit=nofile={nofile}:{nofile}", f"--ulimit=nproc={nproc}:{nproc}"]
    if volume:
        args.append(f"--volume={volume}")
    return podman(store, *args, image, *cmd)


def load(store: Path, archive: Path) -> tuple[str, dict]:
    start = time.monotonic()
    r = podman(store, "load", "--input", str(archive))
    if r.returncode != 0:
        raise ImageError(f"image-test: podman load {archive} failed (exit {r.returncode}): {r.stderr[-2000:]}")
    say(f"image-test: podman load {archive.name}: ok in {time.monotonic() - start:.0f}s")
    ids = podman(store, "images", "--quiet", "--no-trunc").stdout.split()
    if len(ids) != 1:
        raise ImageError(f"image-test: expected one image after podman load, got {ids}")
    inspect = json.loads(podman(store, "image", "inspect", ids[0]).stdout)[0]
    return ids[0], inspect


def check_config(inspect: dict) -> None:
    cfg, want = inspect.get("Config") or {}, dockerfile_config()
    if cfg.get("User") != "65532:65532" or cfg.get("User") != want.user:
        raise ImageError(f"image-test: the image's user is {cfg.get('User')!r}, not 65532:65532 (Dockerfile: {want.user})")
    if tuple(cfg.get("Cmd") or ()) != want.cmd or not set(want.env) <= set(cfg.get("Env") or ()):
        raise ImageError(f"image-test: the image's Cmd/Env {cfg.get('Cmd')} {cfg.get('Env')} differ from the "
                         f"Dockerfile's {want.cmd} {want.env}")
    say(f"image-test: config: user {cfg['User']}, cmd {' '.join(cfg['Cmd'])}, env as the Dockerfile's: ok")


# Each check: a shell command run in one container, and what its output must hold. One
# container for all of them: with the vfs driver every container copies the whole rootfs.
CHECKS = (
    ("runs as uid 65532", "id -u", lambda out: out.strip() == "65532"),
    ("entry points kernel-warmup-operator, kernel-warmer and the serving sitecustomize are present",
     "ls /opt/kernel-warmup/venv/bin/kernel-warmup-operator /opt/kernel-warmup/venv/bin/kernel-warmer "
     "/opt/kernel-warmup/serving_site/sitecustomize.py", lambda out: True),
    ("no torch in the operator image", "python3 -c 'import importlib.util as u; print(u.find_spec(\"torch\"))'",
     lambda out: out.strip() == "None"),
    ("kernel-warmup-operator --help", "kernel-warmup-operator --help", lambda out: "usage:" in out),
    ("kernel-warmer --help", "kernel-warmer --help", lambda out: "usage:" in out),
    ("python3 -m kernel_warmer.bootstrap copies the warmer and the sitecustomize",
     "python3 -m kernel_warmer.bootstrap --dest /kernel-warmup && ls /kernel-warmup/python/kernel_warmer/__init__.py "
     "/kernel-warmup/site/sitecustomize.py", lambda out: True),
)
MARK = "@@kernel-warmup-check"


def checks_script() -> str:
    return "; ".join(f"echo '{MARK} {i}'; ({cmd}) 2>&1; echo \"{MARK} rc $?\"" for i, (_, cmd, _) in enumerate(CHECKS))


def parse_checks(stdout: str) -> dict[int, tuple[int, str]]:
    """``{check index: (exit code, output)}`` from the marked output of checks_script()."""
    out: dict[int, tuple[int, str]] = {}
    current, lines = None, []
    for line in stdout.splitlines():
        if line.startswith(f"{MARK} rc ") and current is not None:
            out[current] = (int(line.split()[-1]), "\n".join(lines))
            current, lines = None, []
        elif line.startswith(f"{MARK} "):
            current, lines = int(line.split()[-1]), []
        elif current is not None:
            lines.append(line)
    return out


def check_runs(store: Path, image: str, scratch: Path) -> None:
    dest = scratch / "pkg"
    dest.mkdir()
    os.chown(dest, 65532, 65532)
    r = heartbeat_run_in_image(store, image, dest)
    results = parse_checks(r.stdout)
    for i, (what, cmd, ok) in enumerate(CHECKS):
        rc, out = results.get(i, (-1, "(did not run)"))
        if rc != 0 or not ok(out):
            raise ImageError(f"image-test: {what}: failed: `{cmd}` exited {rc}:\n{out[-2000:]}\n"
                             f"podman stderr: {r.stderr[-1000:]}")
        say(f"image-test: {what}: ok")


def heartbeat_run_in_image(store: Path, image: str, dest: Path) -> subprocess.CompletedProcess:
    start = time.monotonic()
    r = run_in_image(store, image, "sh", "-c", checks_script(), volume=f"{dest}:/kernel-warmup")
    say(f"image-test: one container (read-only root, no network) ran {len(CHECKS)} checks in "
        f"{time.monotonic() - start:.0f}s")
    return r


def check_image(archive: Path) -> None:
    # In the system temp folder: podman refuses a runroot path longer than 50 characters.
    with tempfile.TemporaryDirectory(prefix="kw-podman-") as tmp:
        store = Path(tmp)
        try:
            image, inspect = load(store, archive)
            check_config(inspect)
            check_runs(store, image, store)
        finally:
            podman(store, "system", "reset", "--force")  # the vfs layers are root-owned copies
    say(f"image-test: passed; archive {archive} {archive.stat().st_size / 2**20:.0f} MiB, "
        f"image {inspect.get('Size', 0) / 2**20:.0f} MiB unpacked")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cmd", choices=["build", "test", "base"])
    ap.add_argument("--if-ready", action="store_true",
                    help="test: skip, saying why, unless the tools are installed and the Debian base is cached")
    args = ap.parse_args(argv)
    reason = not_ready()
    if args.if_ready and not reason and not base_cached():
        reason = f"no Debian base rootfs cached in {base_dir()} (`make image` makes it once, ~4 min)"
    if reason:
        if args.if_ready:
            say(f"image-test skipped: {reason}")
            return 0
        say(f"error: {reason}")
        return 1
    try:
        if args.cmd == "base":
            say(f"base rootfs: {ensure_base()}")
        elif args.cmd == "build":
            build()
        else:
            check_image(build())
    except ImageError as exc:
        say(f"error: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
