"""The engine phase against a stand-in ``vllm serve`` (tests/support/fake_vllm): when it
runs, readiness, the first request, a crash, a server never ready within the timeout, one
that ignores SIGTERM or leaves a child behind, the GPU memory check, and the whole warmup
(the files it wrote in the manifest, a second run warm, the cache env in the server)."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

from kernel_warmer import runner
from kernel_warmer.cache.volume import CacheLayout
from kernel_warmer.server import command, phase, process
from kernel_warmer.spec import WarmerSpec

ROOT = Path(__file__).resolve().parents[2]
FAKE = ROOT / "tests" / "support" / "fake_vllm"
SERVE_ARGS = ["m", "--max-model-len", "2048", "--port", "8000"]


def spec(tmp_path: Path, **server) -> WarmerSpec:
    return WarmerSpec.from_dict({
        "model": {"layers": [{"numHeads": 4, "numKvHeads": 4, "headSize": 64}]}, "cacheDir": str(tmp_path / "cache"),
        "timeoutSeconds": 60, "triton": {"enabled": False}, "flashinfer": {"enabled": False},
        "server": {"args": SERVE_ARGS, "pythonpath": str(FAKE), **server}})


@pytest.fixture()
def pod(monkeypatch):
    """An image with vLLM (the stand-in) and a Pod with a GPU."""
    monkeypatch.setattr(phase, "image_has_vllm", lambda: True)
    monkeypatch.setattr(phase, "pod_has_gpu", lambda: True)
    monkeypatch.setattr(phase.gpu, "memory_used", lambda: None)
    monkeypatch.delenv("FAKE_VLLM_MODE", raising=False)


# --- when it runs ------------------------------------------------------------------------


@pytest.mark.parametrize("mode,vllm,gpu,args,target,run,why", [
    ("auto", True, True, SERVE_ARGS, None, True, "spec.engineWarmup is auto"),
    ("never", True, True, SERVE_ARGS, None, False, "spec.engineWarmup is never"),
    ("auto", False, True, SERVE_ARGS, None, False, "vLLM's server (vllm.entrypoints.cli.main) is not importable"),
    ("auto", True, False, SERVE_ARGS, None, False, "no GPU is visible"),
    ("auto", True, True, [], None, False, "no serving command"),
    ("auto", True, True, SERVE_ARGS, "sm_90", False, "compile-only"),
    ("always", False, True, SERVE_ARGS, None, False, "spec.engineWarmup is always, but vLLM's server"),
])
def test_when_the_engine_phase_runs(tmp_path, mode, vllm, gpu, args, target, run, why):
    doc = json.loads(spec(tmp_path, warmup=mode, args=args).to_json())
    if target:
        doc["triton"]["compileOnlyTarget"] = target
    d = phase.decide(WarmerSpec.from_dict(doc), vllm, gpu)
    assert d.run is run and why in d.reason


def test_a_multi_pod_world_is_left_to_its_leader(tmp_path):
    doc = json.loads(spec(tmp_path).to_json())
    doc["distributed"] = {"worldSize": 2, "masterAddr": "leader"}
    assert "spans Pods" in phase.decide(WarmerSpec.from_dict(doc), True, True).reason


# --- the server process ------------------------------------------------------------------


def start(tmp_path, mode="ok", ready_s="0.3"):
    env = dict(os.environ, PYTHONPATH=str(FAKE), FAKE_VLLM_MODE=mode, FAKE_VLLM_READY_S=ready_s,
               **CacheLayout.server_env_for(str(tmp_path / "cache")))
    serve = command.serve_argv([], SERVE_ARGS)
    port = process.free_port()
    return process.start(serve.argv(sys.executable, port), env, port)


def test_ready_request_and_a_clean_stop(tmp_path):
    server = start(tmp_path)
    try:
        assert process.wait_ready(server, time.monotonic() + 30, print) < 30
        assert process.exercise(server, 10)["endpoint"] == "/v1/completions"
    finally:
        stopped = process.stop(server)
    assert stopped["how"] == "SIGTERM" and stopped["exit_code"] == 0
    assert server.log.phases == {"model_load": 0.25, "compile": 0.42, "cuda_graphs": 1.0, "init_engine": 0.9}


def test_a_crash_is_named_with_the_servers_last_lines(tmp_path):
    server = start(tmp_path, "crash")
    with pytest.raises(process.ServerError, match=r"(?s)exited with code 3 .*CUDA out of memory"):
        process.wait_ready(server, time.monotonic() + 30, print)
    process.stop(server)


def test_not_ready_by_the_deadline_is_a_timeout_and_progress_is_said(tmp_path, monkeypatch):
    monkeypatch.setattr(process, "PROGRESS_S", 0.5)
    lines = []
    server = start(tmp_path, "hang")
    try:
        with pytest.raises(process.ServerError, match="not ready within the warmup's timeoutSeconds"):
            process.wait_ready(server, time.monotonic() + 2.5, lines.append)
    finally:
        process.stop(server)
    assert any(line.startswith("engine: vLLM is ") for line in lines), lines


@pytest.mark.parametrize("mode,how", [("stubborn", "SIGKILL"), ("orphan", "SIGTERM, children SIGKILL")])
def test_what_does_not_stop_is_killed_with_its_whole_group(tmp_path, mode, how):
    server = start(tmp_path, mode)
    process.wait_ready(server, time.monotonic() + 30, print)
    stopped = process.stop(server, grace_s=1.5)
    assert stopped["how"] == how
    assert not process._group_alive(server.proc.pid)


def test_no_endpoint_answering_is_an_error(tmp_path):
    server = start(tmp_path, "badrequest")
    try:
        process.wait_ready(server, time.monotonic() + 30, print)
        with pytest.raises(process.ServerError, match="answered no request"):
            process.exercise(server, 5)
    finally:
        process.stop(server)


def test_gpu_memory_must_come_back(monkeypatch):
    gib = 1 << 30
    readings = iter([[40 * gib], [20 * gib], [3 * gib]])
    monkeypatch.setattr(phase.gpu, "memory_used", lambda: next(readings))
    assert phase.wait_memory_free([2 * gib], time.monotonic() + 30, print)["checked"]
    monkeypatch.setattr(phase.gpu, "memory_used", lambda: [40 * gib])
    monkeypatch.setattr(phase, "MEMORY_WAIT_S", 1.0)
    with pytest.raises(process.ServerError, match=r"left GPU memory in use .*\[38.0\] GiB"):
        phase.wait_memory_free([2 * gib], time.monotonic() + 30, print)


# --- the whole warmup --------------------------------------------------------------------


def test_the_warmup_runs_the_server_records_its_files_and_is_warm_after(tmp_path, pod, monkeypatch):
    argv_file = tmp_path / "argv.json"
    monkeypatch.setenv("FAKE_VLLM_ARGV", str(argv_file))
    s = spec(tmp_path)
    first = runner.run(s, log=print)
    assert first.status == "ok", first.error
    assert first.server["status"] == "ok" and first.server["request"]["endpoint"] == "/v1/completions"
    assert first.phases["engine"] > 0 and first.phases["vllm_compile"] == 0.42
    argv = json.loads(argv_file.read_text())
    assert argv[1:] == ["serve", *SERVE_ARGS[:3], "--load-format", "dummy", "--port", argv[-1]]
    layout = CacheLayout(Path(s.cache_dir))
    manifest = json.loads(layout.manifest_path(first.cache_key).read_text())
    files = {f["path"] for f in manifest["files"]}
    assert any(p.startswith("vllm/torch_compile_cache/") for p in files)
    assert "vllm/sampling/topk.so" in files  # built by the first request
    assert any(p.startswith("triton/") for p in files) and not any(p.endswith(".lock") for p in files)
    assert runner.check(s)[0]
    second = runner.run(s, log=print)
    assert second.cache == "warm" and second.server == {"status": "warm (manifest verified)"}


def test_a_warm_start_loads_from_cache_and_writes_nothing_new(tmp_path, pod):
    s = spec(tmp_path)
    assert runner.run(s, log=print).status == "ok"
    for m in CacheLayout(Path(s.cache_dir)).manifests_dir.glob("*.json"):
        m.unlink()  # as after a change of the plan that leaves the server's caches valid
    again = runner.run(s, log=print)
    assert again.server["files_written"] == 0 and again.server["from_cache"], again.server


def test_the_server_gets_the_cache_env_and_the_serving_pythonpath(tmp_path, pod):
    s = spec(tmp_path, pythonpath=f"/kernel-warmup/site:{FAKE}")
    env = phase.server_env(s, CacheLayout(Path(s.cache_dir)), base={"KERNEL_WARMER_SPEC": "{}", "HF_TOKEN": "t",
                                                                     "TRITON_CACHE_DIR": "/elsewhere"})
    assert env["PYTHONPATH"] == f"/kernel-warmup/site:{FAKE}" and env["HF_TOKEN"] == "t"
    assert "KERNEL_WARMER_SPEC" not in env
    assert env["TRITON_CACHE_DIR"] == f"{s.cache_dir}/triton" and env["VLLM_CACHE_ROOT"] == f"{s.cache_dir}/vllm"
    assert env["CUDA_CACHE_PATH"] == f"{s.cache_dir}/cuda"


@pytest.mark.parametrize("mode,policy,status", [("crash", "Fail", "failed"), ("hang", "Ignore", "failed")])
def test_a_failed_engine_phase_fails_the_warmup_and_records_nothing(tmp_path, pod, monkeypatch, mode, policy, status):
    monkeypatch.setenv("FAKE_VLLM_MODE", mode)
    doc = json.loads(spec(tmp_path).to_json())
    doc.update(failurePolicy=policy, timeoutSeconds=8)
    s = WarmerSpec.from_dict(doc)
    out = runner.run(s, log=print)
    assert out.status == status and "vLLM" in out.error
    assert not list(CacheLayout(Path(s.cache_dir)).manifests_dir.glob("*.json"))
    assert not runner.check(s)[0]


def test_the_files_of_hidden_folders_count_but_temp_files_and_logs_do_not(tmp_path):
    layout = CacheLayout(tmp_path)
    for rel in ("flashinfer-jit/.cache/flashinfer/0.6.14/90a/cached_ops/sampling/sampling.so",
                "flashinfer-jit/.cache/flashinfer/flashinfer_jit.log", "vllm/.x.tmp-123", "vllm/a.lock",
                "triton/abc/k.cubin", "elsewhere/x"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x")
    assert sorted(phase.cache_files(layout)) == [
        "flashinfer-jit/.cache/flashinfer/0.6.14/90a/cached_ops/sampling/sampling.so", "triton/abc/k.cubin"]


def test_a_kernel_only_vllm_tree_has_no_server(monkeypatch, tmp_path):
    """The GPU tests' vLLM (its prefill kernel alone, tests/support/vllm_kernel.py) is no server."""
    (tmp_path / "vllm").mkdir()
    (tmp_path / "vllm" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert not phase.image_has_vllm()
    monkeypatch.syspath_prepend(str(FAKE))
    assert phase.image_has_vllm()
