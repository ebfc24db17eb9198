"""`kernel-warmer run` outside and inside a Pod (issue 11, item 11): the termination log is
written only inside a Pod or when asked, --cache-dir is needed outside one, --workers < 0
and other usage errors exit 2 like `plan` and `check`, and a YAML alias bomb in --plan is
refused fast."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kernel_warmer.pod import POD_TERMINATION_LOG, in_pod, termination_path

pytestmark = pytest.mark.reliability
ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "tests" / "fixtures" / "configs"
SKIPPED_ONLY = str(CONFIGS / "gpt-oss-20b.json")  # every layer skipped: a run that compiles nothing


def warmer(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    e = dict(os.environ, PYTHONPATH=str(ROOT / "initcontainer"))
    e.pop("KUBERNETES_SERVICE_HOST", None)
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "kernel_warmer", *args], capture_output=True, text=True,
                          env=e, timeout=120)


def test_termination_path_inside_and_outside_a_pod():
    assert termination_path(None, {}) is None
    assert termination_path(None, {"KUBERNETES_SERVICE_HOST": "10.0.0.1"}) == POD_TERMINATION_LOG
    assert termination_path("/tmp/t", {}) == "/tmp/t"
    assert in_pod({"KUBERNETES_SERVICE_HOST": "10.0.0.1"}) and not in_pod({})


@pytest.mark.skipif(os.path.lexists(POD_TERMINATION_LOG), reason="this machine has a /dev/termination-log")
def test_run_outside_a_pod_writes_no_termination_log(tmp_path):
    out = warmer("run", "--model-config", SKIPPED_ONLY, "--cache-dir", str(tmp_path / "c"), "--no-flashinfer",
                 "--target", "sm_90")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["status"] == "ok"
    assert not os.path.lexists(POD_TERMINATION_LOG)


def test_run_writes_the_termination_log_when_asked(tmp_path):
    log = tmp_path / "term"
    out = warmer("run", "--model-config", SKIPPED_ONLY, "--cache-dir", str(tmp_path / "c"), "--no-flashinfer",
                 "--target", "sm_90", "--termination-log", str(log))
    assert out.returncode == 0 and json.loads(log.read_text())["status"] == "ok"


def test_run_needs_cache_dir_outside_a_pod(tmp_path):
    out = warmer("run", "--model-config", SKIPPED_ONLY, "--no-flashinfer", "--target", "sm_90")
    assert out.returncode == 2 and "--cache-dir" in out.stderr, out.stderr
    assert not Path("/kernel-warmup-cache").exists() or Path("/kernel-warmup-cache").is_dir()


@pytest.mark.parametrize("args, text", [
    (("--workers", "-1"), "--workers must be >= 0"),
    (("--compile-only",), "--compile-only needs --target"),
    (("--max-num-batched-tokens", "0"), "maxNumBatchedTokens"),
])
def test_run_usage_errors_exit_2_with_the_flag_named(tmp_path, args, text):
    out = warmer("run", "--model-config", SKIPPED_ONLY, "--cache-dir", str(tmp_path / "c"), *args)
    assert out.returncode == 2, out.stderr
    assert text in out.stderr and "Traceback" not in out.stderr
    assert json.loads(out.stdout)["status"] == "failed"  # still a summary for the operator
    out = warmer("run", "--model-config", SKIPPED_ONLY, "--cache-dir", str(tmp_path / "c"), *args,
                 "--failure-policy", "ignore")
    assert out.returncode == 0  # Ignore: the server starts


def test_negative_workers_in_a_spec_names_the_field(tmp_path):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"model": {"configPath": SKIPPED_ONLY}, "triton": {"workers": -2}}))
    out = warmer("check", "--spec", str(spec))
    assert out.returncode == 2 and "triton.workers" in out.stderr, out.stderr


BOMB = """
a: &a ["x", "x", "x", "x", "x", "x", "x", "x", "x"]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]
i: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h]
layers:
  - {numHeads: *i, numKvHeads: 8, headSize: 128}
"""


@pytest.mark.parametrize("sub", ["plan", "check", "run"])
def test_yaml_alias_bomb_is_refused_fast(tmp_path, sub):
    pytest.importorskip("yaml")
    p = tmp_path / "plan.yaml"
    p.write_text(BOMB)
    start = time.monotonic()
    out = warmer(sub, "--plan", str(p), "--cache-dir", str(tmp_path / "c")) if sub != "plan" else warmer(sub, "--plan", str(p))
    assert time.monotonic() - start < 10
    assert out.returncode == 2 and "aliases" in out.stderr, out.stderr[-500:]


def test_yaml_with_a_few_aliases_is_fine(tmp_path):
    pytest.importorskip("yaml")
    p = tmp_path / "plan.yaml"
    p.write_text("l: &l {numHeads: 8, numKvHeads: 8, headSize: 128}\nlayers: [*l, *l]\n")
    out = warmer("plan", "--plan", str(p), "--json")
    assert out.returncode == 2 and "unknown field" in out.stderr  # 'l' is no plan field: parsed, not refused
    p.write_text("- &l {numHeads: 8, numKvHeads: 8, headSize: 128}\n- *l\n")
    assert warmer("plan", "--plan", str(p), "--json").returncode == 0
