"""One payload, made on rank 0, identical on every rank: rendezvous, broadcast, write, verify.

The warmer spawns one worker per visible GPU in its pod; pods of a multi-pod group
(LeaderWorkerSet, or explicit variables) join one torch.distributed world. Rank 0 runs a
*payload producer* (the FlashInfer tune, or anything in tests), the bytes are broadcast,
local rank 0 of each node writes them atomically, every rank loads them, and all ranks
compare a sha256 of what they read back. Any divergence fails on every rank, naming the
rank; so does a rank that never joins or dies, within a bounded time, never a hang.

Nothing here imports torch at module import time (the package is stdlib-only there).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional

from .cache import atomic_write_bytes, sha256_bytes
from .spec import DistributedSection

# Exit code of a worker whose watchdog fired (the collective it was in cannot be unblocked).
WATCHDOG_EXIT = 86


class WorldError(RuntimeError):
    """A rank is missing, dead, or disagrees; ``ranks`` names the culprits."""

    def __init__(self, message: str, ranks: tuple[int, ...] = ()):
        self.ranks = ranks
        super().__init__(message)


# --- who am I: pure derivation from the pod's environment ------------------------------


@dataclass(frozen=True)
class WorldInfo:
    """One worker's place in the world.

    A *node* is a pod: each pod spawns ``local_world_size`` workers (its visible GPUs),
    so ``world_size = num_nodes * local_world_size`` and every pod must see the same GPU
    count (LeaderWorkerSet pods share one template). ``num_nodes``/``node_rank`` come, per
    field, from the spec (``distributed.worldSize``/``rank``, counted in pods), else from
    ``WORLD_SIZE``/``RANK`` (one entry per pod, as Kubeflow's PyTorchJob sets them), else
    from LeaderWorkerSet's ``LWS_GROUP_SIZE``/``LWS_WORKER_INDEX``, else a single pod.
    """

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    node_rank: int
    num_nodes: int
    master_addr: str
    master_port: int
    source: str  # where num_nodes/node_rank came from: "spec" | "env" | "lws" | "single-pod"


def _env_int(env: Mapping[str, str], name: str) -> Optional[int]:
    raw = env.get(name)
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise WorldError(f"environment variable {name}={raw!r} is not an integer") from None


def derive_world(
    env: Mapping[str, str],
    spec: Optional[DistributedSection],
    local_world_size: int,
    local_rank: int = 0,
) -> WorldInfo:
    """Rank, world size and master address of one worker, from env and spec (pure)."""
    spec = spec or DistributedSection()
    if local_world_size < 1:
        raise WorldError(f"no workers in this pod (local_world_size={local_world_size}); is a GPU visible?")
    if not 0 <= local_rank < local_world_size:
        raise WorldError(f"local_rank {local_rank} outside [0, {local_world_size})")

    candidates = [
        ("spec", spec.world_size, spec.rank, spec.master_addr, "distributed.worldSize/distributed.rank"),
        ("env", _env_int(env, "WORLD_SIZE"), _env_int(env, "RANK"), env.get("MASTER_ADDR") or None, "WORLD_SIZE/RANK"),
        ("lws", _env_int(env, "LWS_GROUP_SIZE"), _env_int(env, "LWS_WORKER_INDEX"),
         env.get("LWS_LEADER_ADDRESS") or None, "LWS_GROUP_SIZE/LWS_WORKER_INDEX"),
    ]
    num_nodes = node_rank = master = None
    source = "single-pod"
    for name, size, rank, addr, fields in candidates:
        if num_nodes is None and size is not None:
            num_nodes, source = size, name
            if rank is None and size > 1:
                raise WorldError(f"{fields}: world size {size} is set but this pod's rank is not")
        if node_rank is None and rank is not None and num_nodes is not None:
            node_rank = rank
        if master is None and addr:
            master = addr
    num_nodes = 1 if num_nodes is None else num_nodes
    node_rank = 0 if node_rank is None else node_rank
    if num_nodes < 1:
        raise WorldError(f"world size must be >= 1, got {num_nodes} (from {source})")
    if not 0 <= node_rank < num_nodes:
        raise WorldError(f"pod rank {node_rank} outside [0, {num_nodes}) (from {source})")
    if master is None:
        if num_nodes > 1:
            raise WorldError(
                f"{num_nodes} pods but no master address: set distributed.masterAddr, MASTER_ADDR "
                "or run under a LeaderWorkerSet (LWS_LEADER_ADDRESS)"
            )
        master = "127.0.0.1"
    port = _env_int(env, "MASTER_PORT")
    port = spec.master_port if port is None else port
    if not 0 < port < 65536:
        raise WorldError(f"master port {port} out of range")
    return WorldInfo(
        rank=node_rank * local_world_size + local_rank,
        world_size=num_nodes * local_world_size,
        local_rank=local_rank,
        local_world_size=local_world_size,
        node_rank=node_rank,
        num_nodes=num_nodes,
        master_addr=master,
        master_port=port,
        source=source,
    )


# --- rendezvous with liveness: names the rank that is missing or dead -----------------


class Rendezvous:
    """A TCPStore (hosted by rank 0) plus heartbeats, so failures name a rank.

    ``join`` waits for every rank's key and names the absent ones. A heartbeat thread
    bumps this rank's counter and watches everyone else's; ``guard`` arms a watchdog
    around a collective: if it does not finish in time, the ranks that never arrived or
    stopped beating are named and the process exits (a blocked NCCL/gloo call cannot be
    interrupted from Python). If the store itself is gone, its host, rank 0, died.
    """

    def __init__(self, world: WorldInfo, timeout_s: float, heartbeat_s: float = 1.0,
                 stale_after_s: float = 10.0, fail_file: Optional[Path] = None):
        from datetime import timedelta

        import torch.distributed as dist

        self.world = world
        self.timeout_s = timeout_s
        self.heartbeat_s = heartbeat_s
        self.stale_after_s = stale_after_s
        self.fail_file = fail_file
        self._stop = threading.Event()
        self._seen: dict[int, tuple[int, float]] = {}
        self._store_dead: Optional[str] = None
        self._lock = threading.Lock()
        try:
            self.store = dist.TCPStore(
                world.master_addr, world.master_port, world.world_size,
                is_master=world.rank == 0, timeout=timedelta(seconds=timeout_s),
                wait_for_workers=False,
            )
        except Exception as exc:  # noqa: BLE001 - any connect failure means the same thing
            if world.rank == 0:
                raise WorldError(f"rank 0 could not host the rendezvous on port {world.master_port}: {exc}") from exc
            raise WorldError(
                f"rank 0 (rendezvous host {world.master_addr}:{world.master_port}) never came up "
                f"within {timeout_s:.0f}s: {exc}", (0,)) from exc
        self._beat_thread = threading.Thread(target=self._beat, name="kw-heartbeat", daemon=True)

    # heartbeats ---------------------------------------------------------------------

    def _beat(self) -> None:
        keys = [f"hb/{r}" for r in range(self.world.world_size)]
        while not self._stop.is_set():
            try:
                self.store.add(f"hb/{self.world.rank}", 1)
                values = self.store.multi_get(keys) if self._all_beating() else [
                    self.store.get(k) if self.store.check([k]) else b"0" for k in keys]
                now = time.monotonic()
                with self._lock:
                    for r, v in enumerate(values):
                        count = int(v or b"0")
                        last = self._seen.get(r)
                        if last is None or last[0] != count:
                            self._seen[r] = (count, now)
            except Exception as exc:  # noqa: BLE001
                with self._lock:
                    self._store_dead = str(exc)
            self._stop.wait(self.heartbeat_s)

    def _all_beating(self) -> bool:
        with self._lock:
            return len(self._seen) == self.world.world_size and all(c > 0 for c, _ in self._seen.values())

    def stale_ranks(self) -> list[int]:
        now = time.monotonic()
        with self._lock:
            return sorted(r for r, (_, t) in self._seen.items()
                          if r != self.world.rank and now - t > self.stale_after_s)

    # joining ------------------------------------------------------------------------

    def join(self) -> None:
        """Every rank checks in; those absent after the timeout are named."""
        self.store.set(f"join/{self.world.rank}", socket.gethostname())
        self._beat_thread.start()
        deadline = time.monotonic() + self.timeout_s
        missing = list(range(self.world.world_size))
        while True:
            self.check_abort()
            missing = [r for r in missing if not self._check(f"join/{r}")]
            if not missing:
                return
            if time.monotonic() > deadline:
                raise WorldError(
                    f"rank(s) {missing} never joined the world of {self.world.world_size} within "
                    f"{self.timeout_s:.0f}s (rendezvous {self.world.master_addr}:{self.world.master_port})",
                    tuple(missing))
            time.sleep(0.1)

    def abort(self, msg: str, ranks: tuple[int, ...], linger_s: Optional[float] = None) -> None:
        """Post why this rank gives up; rank 0 (the store's host) waits for the others to read it.

        A live rank reads it within one collective timeout (its guard checks for an abort,
        or its watchdog fires), so rank 0 keeps the store up that long for every rank that
        is still beating; leaving sooner turned the named culprit into "rank 0 is gone".
        """
        if linger_s is None:
            linger_s = self.timeout_s + 2 * self.heartbeat_s
        with contextlib.suppress(Exception):
            if not self.store.check(["abort/msg"]):
                self.store.set("abort/ranks", json.dumps(list(ranks)))
                self.store.set("abort/msg", msg)
            if self.world.rank == 0:
                waiting = [r for r in range(1, self.world.world_size) if r not in ranks]
                until = time.monotonic() + linger_s
                while time.monotonic() < until and not all(
                        self.store.check([f"abort-ack/{r}"]) for r in waiting):
                    if self.stale_ranks():
                        waiting = [r for r in waiting if r not in self.stale_ranks()]
                    time.sleep(0.05)

    def check_abort(self) -> None:
        """Raise the abort another rank posted, naming the culprits it named."""
        if self.world.world_size > 1 and self._check("abort/msg"):
            msg = self.get("abort/msg")
            ranks = tuple(json.loads(self.get("abort/ranks")))
            with contextlib.suppress(Exception):
                self.store.set(f"abort-ack/{self.world.rank}", "1")
            raise WorldError(msg, ranks)

    def _check(self, key: str) -> bool:
        try:
            return self.store.check([key])
        except Exception as exc:  # noqa: BLE001
            raise self._host_gone(exc) from exc

    def get(self, key: str) -> str:
        """A store read that names rank 0 when its host is gone (it holds the store)."""
        try:
            return self.store.get(key).decode()
        except Exception as exc:  # noqa: BLE001
            raise self._host_gone(exc) from exc

    def _host_gone(self, exc: BaseException) -> WorldError:
        return WorldError(f"rank 0 (rendezvous host {self.world.master_addr}:{self.world.master_port}) "
                          f"is gone: {type(exc).__name__}: {exc}", (0,))

    def wait_key(self, key: str, timeout_s: float, watch: tuple[int, ...]) -> str:
        """Wait for ``key`` while the ranks in ``watch`` keep beating."""
        deadline = time.monotonic() + timeout_s
        while not self._check(key):
            self.check_abort()
            dead = [r for r in self.stale_ranks() if r in watch]
            if dead:
                raise WorldError(f"rank(s) {dead} stopped responding (no heartbeat for "
                                 f"{self.stale_after_s:.0f}s) while rank {self.world.rank} waited for {key}",
                                 tuple(dead))
            if time.monotonic() > deadline:
                raise WorldError(f"rank {self.world.rank}: {key} not posted by rank(s) {list(watch)} "
                                 f"within {timeout_s:.0f}s", tuple(watch))
            time.sleep(0.1)
        return self.get(key)

    # collectives --------------------------------------------------------------------

    def diagnose(self, phase: str) -> tuple[str, tuple[int, ...]]:
        try:
            absent = [r for r in range(self.world.world_size)
                      if not self.store.check([f"arrive/{phase}/{r}"])]
        except Exception as exc:  # noqa: BLE001
            return f"rank 0 (rendezvous host) is gone ({exc})", (0,)
        stale = self.stale_ranks()
        if stale:
            return f"rank(s) {stale} stopped responding (dead?)", tuple(stale)
        if absent:
            return f"rank(s) {absent} never reached {phase}", tuple(absent)
        return "every rank arrived and is alive; the collective itself is stuck", ()

    @contextlib.contextmanager
    def guard(self, phase: str, timeout_s: Optional[float] = None) -> Iterator[None]:
        """Bound one collective: on timeout or peer failure, name the culprit rank(s)."""
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        with contextlib.suppress(Exception):
            self.store.set(f"arrive/{phase}/{self.world.rank}", "1")

        def fire() -> None:
            try:
                self.check_abort()  # another rank already said who failed: report that
            except WorldError as posted:
                self._fail_hard(str(posted))
            why, ranks = self.diagnose(phase)
            msg = f"rank {self.world.rank}: {phase} did not finish within {timeout_s:.0f}s: {why}"
            self.abort(msg, ranks)
            self._fail_hard(msg)

        timer = threading.Timer(timeout_s, fire)
        timer.daemon = True
        timer.start()
        try:
            yield
        except WorldError:
            raise
        except Exception as exc:  # a peer died mid-collective (gloo notices at once)
            timer.cancel()
            # A dead peer shows as a stalled heartbeat; give it the time to show.
            deadline = time.monotonic() + self.stale_after_s + 2 * self.heartbeat_s
            while not self.stale_ranks() and time.monotonic() < deadline:
                self.check_abort()
                time.sleep(self.heartbeat_s / 4)
            self.check_abort()
            why, ranks = self.diagnose(phase)
            raise WorldError(f"rank {self.world.rank}: {phase} failed: {why} ({type(exc).__name__}: {exc})",
                             ranks) from exc
        finally:
            timer.cancel()

    def _fail_hard(self, msg: str) -> None:
        print(f"kernel-warmer: {msg}", file=sys.stderr, flush=True)
        if self.fail_file is not None:
            with contextlib.suppress(OSError):
                self.fail_file.write_text(json.dumps({"ok": False, "error": msg}))
        os._exit(WATCHDOG_EXIT)

    def close(self) -> None:
        self._stop.set()


# --- the payload protocol: produce on 0, broadcast, write, load, verify --------------


@dataclass(frozen=True)
class Payload:
    data: bytes
    key: str  # names where it goes (the env key for FlashInfer)


@dataclass
class ShareResult:
    rank: int
    path: str
    sha256: str
    size: int
    wrote: bool
    loaded: Optional[bool]
    produce_s: float
    broadcast_s: float
    verify_s: float
    per_rank: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def broadcast_bytes(data: Optional[bytes], src: int, device: Any) -> bytes:
    import torch
    import torch.distributed as dist

    is_src = dist.get_rank() == src
    size = torch.tensor([len(data) if is_src and data is not None else 0], dtype=torch.int64, device=device)
    dist.broadcast(size, src)
    n = int(size.item())
    if n == 0:
        return b""
    if is_src:
        buf = torch.frombuffer(bytearray(data), dtype=torch.uint8).to(device)
    else:
        buf = torch.empty(n, dtype=torch.uint8, device=device)
    dist.broadcast(buf, src)
    return bytes(buf.cpu().untyped_storage())[:n]


def share_payload(
    world: WorldInfo,
    rdv: Rendezvous,
    producer: Callable[[], Payload],
    dest_for: Callable[[str], Path],
    *,
    device: Any,
    local_key: Optional[Callable[[], str]] = None,
    loader: Optional[Callable[[Path], bool]] = None,
    read_back: Callable[[Path], bytes] = lambda p: p.read_bytes(),
    produce_timeout_s: float = 1800.0,
) -> ShareResult:
    """Rank 0 produces; all ranks receive, local rank 0 writes, all load and cross-check."""
    import torch.distributed as dist

    t0 = time.monotonic()
    payload: Optional[Payload] = None
    if world.rank == 0:
        try:
            payload = producer()
        except Exception as exc:
            rdv.store.set("payload/status", f"error: {type(exc).__name__}: {exc}")
            raise
        rdv.store.set("payload/key", payload.key)
        rdv.store.set("payload/status", "ok")
    else:
        status = rdv.wait_key("payload/status", produce_timeout_s, watch=(0,))
        if status != "ok":
            raise WorldError(f"rank 0 failed to produce the payload: {status[len('error: '):]}", (0,))
    key = rdv.get("payload/key")
    t1 = time.monotonic()

    with rdv.guard("broadcast"):
        data = broadcast_bytes(payload.data if payload else None, 0, device)
    sha_received = sha256_bytes(data)
    t2 = time.monotonic()

    dest = dest_for(key)
    if world.local_rank == 0:
        atomic_write_bytes(dest, data)
    with rdv.guard("written"):
        dist.barrier()
    info: dict[str, Any] = {"rank": world.rank, "host": socket.gethostname(), "sha_received": sha_received,
                            "key": local_key() if local_key else key, "error": None}
    try:
        info["sha_file"] = sha256_bytes(read_back(dest))
        info["loaded"] = loader(dest) if loader else None
    except Exception as exc:  # noqa: BLE001 - reported by every rank below, naming this one
        info.update(sha_file=None, loaded=False, error=f"{type(exc).__name__}: {exc}")
    with rdv.guard("verify"):
        gathered: list[Any] = [None] * world.world_size
        dist.all_gather_object(gathered, info)
    t3 = time.monotonic()
    check_agreement(gathered, loader is not None)
    return ShareResult(rank=world.rank, path=str(dest), sha256=sha_received, size=len(data),
                       wrote=world.local_rank == 0, loaded=info["loaded"], produce_s=t1 - t0,
                       broadcast_s=t2 - t1, verify_s=t3 - t2, per_rank=gathered)


def check_agreement(gathered: list[dict[str, Any]], expect_loaded: bool) -> None:
    """Every rank read rank 0's exact bytes, under the same key, and loaded them (pure)."""
    ref = gathered[0]
    problems: list[str] = []
    culprits: list[int] = []
    for g in gathered:
        why = []
        if g.get("error"):
            why.append(f"could not read/load the file: {g['error']}")
        if g["sha_received"] != ref["sha_received"]:
            why.append(f"received sha256 {g['sha_received'][:12]} != rank 0's {ref['sha_received'][:12]}")
        if g.get("sha_file") is not None and g["sha_file"] != ref["sha_received"]:
            why.append(f"file on disk has sha256 {g['sha_file'][:12]} != rank 0's {ref['sha_received'][:12]}")
        if g["key"] != ref["key"]:
            why.append(f"environment key {g['key']} != rank 0's {ref['key']}")
        if expect_loaded and g.get("loaded") is False and not g.get("error"):
            why.append("load_configs returned False (FlashInfer rejected the file's environment)")
        if why:
            culprits.append(g["rank"])
            problems.append(f"rank {g['rank']} ({g.get('host', '?')}): " + "; ".join(why))
    if problems:
        raise WorldError("tactic cache disagreement: " + " | ".join(problems), tuple(culprits))


# --- spawning one worker per local GPU -------------------------------------------------


@dataclass
class WorkerOutcome:
    local_rank: int
    exitcode: Optional[int]
    ok: bool
    result: Any = None
    error: Optional[str] = None


def _worker_entry(local_rank: int, local_world_size: int, env: dict[str, str],
                  spec: Optional[DistributedSection], job: Any, result_dir: str,
                  timeout_s: float, stale_after_s: float) -> None:
    """Child process: join the world, run ``job(world, rdv, device)``, leave a result file."""
    out = Path(result_dir) / f"rank-{local_rank}.json"
    rdv: Optional[Rendezvous] = None
    try:
        import torch
        import torch.distributed as dist

        world = derive_world(env, spec, local_world_size, local_rank)
        use_cuda = torch.cuda.is_available() and getattr(job, "use_cuda", True)
        if use_cuda:
            torch.cuda.set_device(local_rank % torch.cuda.device_count())
            device = torch.device("cuda", torch.cuda.current_device())
        else:
            device = torch.device("cpu")
        rdv = Rendezvous(world, timeout_s, stale_after_s=stale_after_s, fail_file=out)
        rdv.join()
        from datetime import timedelta

        with rdv.guard("init_process_group"):  # a peer dying while the mesh connects is named too
            dist.init_process_group("nccl" if use_cuda else "gloo", store=rdv.store, rank=world.rank,
                                    world_size=world.world_size, timeout=timedelta(seconds=timeout_s),
                                    **({"device_id": device} if use_cuda else {}))
        result = job(world, rdv, device)
        out.write_text(json.dumps({"ok": True, "result": result}, default=str))
        with contextlib.suppress(Exception):
            with rdv.guard("shutdown", min(timeout_s, 60)):
                dist.barrier()
        with contextlib.suppress(Exception):
            dist.destroy_process_group()
    except BaseException as exc:  # noqa: BLE001 - the parent reports it
        msg = f"{type(exc).__name__}: {exc}"
        if rdv is not None:
            rdv.abort(msg if isinstance(exc, WorldError) else f"rank {rdv.world.rank} failed: {msg}",
                      tuple(getattr(exc, "ranks", ())) or (rdv.world.rank,))
        print(f"kernel-warmer: local rank {local_rank}: {msg}\n{traceback.format_exc()}", file=sys.stderr, flush=True)
        out.write_text(json.dumps({"ok": False, "error": msg,
                                   "ranks": list(getattr(exc, "ranks", ()))}))
        os._exit(1)  # skip atexit hooks that could block on a broken process group
    finally:
        if rdv is not None:
            rdv.close()


def run_local_workers(job: Any, local_world_size: int, *, env: Optional[Mapping[str, str]] = None,
                      spec: Optional[DistributedSection] = None, timeout_s: float = 300.0,
                      total_timeout_s: float = 3600.0, stale_after_s: float = 10.0) -> list[WorkerOutcome]:
    """Spawn ``local_world_size`` workers running ``job``; collect each one's outcome.

    ``job`` must be picklable (a module-level callable or dataclass instance); it is
    called as ``job(world, rdv, device)`` and returns something JSON-able.
    """
    import multiprocessing as mp

    env = dict(os.environ if env is None else env)
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="kw-workers-") as result_dir:
        procs = [ctx.Process(target=_worker_entry, name=f"kw-worker-{i}",
                             args=(i, local_world_size, env, spec, job, result_dir, timeout_s, stale_after_s))
                 for i in range(local_world_size)]
        for p in procs:
            p.start()
        deadline = time.monotonic() + total_timeout_s
        for p in procs:
            p.join(max(0.0, deadline - time.monotonic()))
        outcomes = []
        for i, p in enumerate(procs):
            if p.is_alive():
                p.kill()
                p.join(5)
                outcomes.append(WorkerOutcome(i, None, False, error=f"killed after {total_timeout_s:.0f}s"))
                continue
            path = Path(result_dir) / f"rank-{i}.json"
            try:
                rec = json.loads(path.read_text())
            except (OSError, ValueError):
                outcomes.append(WorkerOutcome(i, p.exitcode, False, error=f"exited {p.exitcode} without a result"))
                continue
            outcomes.append(WorkerOutcome(i, p.exitcode, bool(rec.get("ok")) and p.exitcode in (0, None),
                                          rec.get("result"), rec.get("error")))
        return outcomes
