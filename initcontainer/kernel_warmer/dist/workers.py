"""Spawning one worker per local GPU, each joining the world and running a job."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

from kernel_warmer.dist.rendezvous import Rendezvous
from kernel_warmer.dist.world import WorldError, derive_world
from kernel_warmer.spec import DistributedSection


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


def _describe_exit(code: int) -> str:
    """'1', or '-6 (SIGABRT)' for a process killed by a signal."""
    if code < 0:
        try:
            return f"{code} ({signal.Signals(-code).name})"
        except ValueError:
            pass
    return str(code)


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
                outcomes.append(WorkerOutcome(i, p.exitcode, False, error=f"exited {_describe_exit(p.exitcode)} without a result"))
                continue
            clean_exit = p.exitcode in (0, None)
            error = rec.get("error")
            if error is None and not clean_exit:
                error = f"exited {_describe_exit(p.exitcode)} after reporting its result"
            outcomes.append(WorkerOutcome(i, p.exitcode, bool(rec.get("ok")) and clean_exit, rec.get("result"), error))
        return outcomes
