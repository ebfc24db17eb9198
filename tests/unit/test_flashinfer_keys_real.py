"""Every serving rank hits its fused-MoE tactics, on the keys each FlashInfer release's own
autotuner writes: 0.6.18 (the ranks are in the key: the warmer copies rank 0's entries
under every rank's key) and 0.7.2.post1, the release vLLM 0.33 pins (one key for every
rank: nothing to copy, and the warmer used to fail on it with TacticFileError).

The warmer tunes (its own ``tune_ops``) in one fresh process; each rank then starts as a
server does (sitecustomize on PYTHONPATH, rank from ``RANK``) and calls the fused MoE as
vLLM's FlashInferExperts does. FlashInfer's code is real, its GPU is stood in for
(tests/support/flashinfer_moe_cpu.py); each release is fetched from PyPI once
(tests/support/flashinfer_cpu.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("torch")

from support import flashinfer_cpu

from kernel_warmer.flashinfer import tactics
from kernel_warmer.versions import flashinfer as flashinfer_facts

ROOT = Path(__file__).resolve().parents[2]
HARNESS = ROOT / "tests" / "support" / "flashinfer_moe_cpu.py"
M_MAX = 64
LOOKUPS = 2 * 7  # gemm1 + gemm2 at M = 1, 2, 4 .. 64


def step(version: str, args: list[str], env: dict[str, str] | None = None) -> dict:
    site = flashinfer_cpu.ensure(version)
    path = [str(site), str(ROOT / "initcontainer")]
    if args[0] == "serve":
        path.insert(0, str(ROOT / "initcontainer" / "serving_site"))
    run_env = {**os.environ, **(env or {}), "PYTHONPATH": os.pathsep.join(path), "FLASHINFER_LOGGING_LEVEL": "ERROR"}
    proc = subprocess.run([sys.executable, str(HARNESS), *args, "--m-max", str(M_MAX)], capture_output=True,
                          text=True, env=run_env, timeout=600)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, f"{args}: rc {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return json.loads(lines[-1][len("RESULT "):])


def serve_all(version: str, root: Path, tp: int, ep: int) -> list[dict]:
    env = {"KERNEL_WARMUP_FLASHINFER_DIR": str(root)}
    world = ["--tp", str(tp), "--ep", str(ep)]
    with ThreadPoolExecutor(max_workers=2) as pool:
        return list(pool.map(lambda r: step(version, ["serve", "--root", str(root), *world, "--rank", str(r)], env),
                             range(tp * ep)))


@pytest.mark.parametrize("version", flashinfer_cpu.VERSIONS)
@pytest.mark.parametrize("tp,ep", [(2, 1), (4, 1), (1, 2)], ids=["tp2", "tp4", "ep2"])
def test_every_rank_hits_every_moe_lookup(tmp_path, version, tp, ep):
    fmt = flashinfer_facts(version).facts.moe_key
    tuned = step(version, ["tune", "--root", str(tmp_path), "--tp", str(tp), "--ep", str(ep)])
    assert tuned["tuned"] == 1 and not tuned["skipped"], tuned
    cov = tuned["coverage"]
    assert cov["worker_ranks"] == list(range(tp * ep)) and cov["moe"][0]["key_format"] == fmt.name
    # the file holds each entry once per rank where the key has the rank, else once
    assert tuned["entries"] == LOOKUPS * (tp * ep if fmt.per_rank else 1)
    for rank, served in enumerate(serve_all(version, tmp_path, tp, ep)):
        assert served["loaded"] == [tuned["path"]] and not served["rejected"], (rank, served)
        assert (served["hits"], served["lookups"]) == (LOOKUPS, LOOKUPS), (rank, served)


def test_without_the_copies_a_per_rank_release_misses_on_the_other_ranks(tmp_path):
    """The harness can fail: on 0.6.18 a file with rank 0's entries only (what FlashInfer
    itself saves) gives rank 1 no hit at all."""
    version = "0.6.18"
    fmt = flashinfer_facts(version).facts.moe_key
    assert fmt.per_rank
    tuned = step(version, ["tune", "--root", str(tmp_path), "--tp", "2"])
    path = Path(tuned["path"])
    doc = json.loads(path.read_text())
    rank0 = {k: v for k, v in doc.items() if k.startswith("_") or tactics.rank_of(k, fmt)[1] == 0}
    path.write_text(json.dumps(tactics.ordered(rank0), indent=2))
    served = serve_all(version, tmp_path, 2, 1)
    assert (served[0]["hits"], served[1]["hits"]) == (LOOKUPS, 0), served
