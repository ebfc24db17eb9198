"""The operator's live /metrics and the chart's observability pack (issue 18).

A live operator (with leader election, as the chart runs it) sees two warmer runs: one
cold and successful with every phase, one failed on its timeout. Its /metrics is linted
with `promtool check metrics` (built into the cache by devcluster/promtool.py; the test
says so when it is missing) and with the project's strict exposition check; the warmup
series carry the numbers and labels the dashboard asks for. The pack (ServiceMonitor,
PrometheusRule, dashboard ConfigMap) is rendered with `helm template`, its rules checked
with `promtool check rules`, and every metric its rules and panels name must be a family
this live operator exports, so the pack cannot rot.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from exposition import convention_problems, parse
from operator_support import (
    ROOT,
    apply,
    get_list,
    kernelwarmup,
    namespace,
    running_operator,
    simulate_init_termination,
    template_of,
    vllm_deployment,
    wait_for,
)

from kernel_warmer.report import TritonCounts, WarmupSummary
from warmup_operator.core import names

pytestmark = pytest.mark.cluster
NS, LEASE_NS = "metrics-live", "metrics-live-system"
CHART = ROOT / "charts/kernel-warmup"
NODE = "gpu-node-1"
PACK = ("--set", "metrics.serviceMonitor.enabled=true", "--set", "metrics.prometheusRule.enabled=true",
        "--set", "metrics.dashboard.enabled=true")


@pytest.fixture(scope="module")
def operator(cluster, tmp_path_factory):
    namespace(cluster, NS), namespace(cluster, LEASE_NS)
    yield from running_operator(cluster, tmp_path_factory, namespaces=(NS,), resync_seconds=2.0,
                                extra_env={"POD_NAME": "metrics-replica"},
                                extra_args=("--leader-elect", "--leader-elect-resource-namespace", LEASE_NS))


def bind(cluster, pod: dict, node: str) -> None:
    """What the scheduler does: a Binding sets the Pod's spec.nodeName."""
    binding = {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": pod["metadata"]["name"], "namespace": NS},
               "target": {"apiVersion": "v1", "kind": "Node", "name": node}}
    cluster.kubectl_run("create", "-f", "-", input=json.dumps(binding))


@pytest.fixture(scope="module")
def exposition(cluster, operator) -> str:
    """/metrics after one cold successful run and one failed run of the warmer."""
    dep = vllm_deployment("llm", NS, labels={"warm": "yes"}, replicas=2)
    dep["spec"]["strategy"] = {"type": "Recreate"}  # no kubelet: a rolling update would stop at one new Pod
    apply(cluster, dep)
    apply(cluster, kernelwarmup("kw", NS))
    wait_for("injection", lambda: names.ANN_HASH in (template_of(cluster, "llm", NS)["metadata"].get("annotations") or {}))
    pods = wait_for("two injected Pods", lambda: (ps := [p for p in get_list(cluster, "pods", NS)
                                                         if names.ANN_INJECTED_BY in (p["metadata"].get("annotations") or {})])
                    and len(ps) == 2 and ps, timeout_s=60)
    ok = WarmupSummary(status="ok", seconds=41.5, cache="cold", triton=TritonCounts(compiled=4, hit=1),
                       phases={"check": 0.25, "triton_compile": 30.0, "flashinfer_jit": 6.0, "flashinfer_tune": 5.0})
    failed = WarmupSummary(status="failed", seconds=600.0, cache="cold", phases={"check": 0.3},
                           error="warmup exceeded timeoutSeconds=600")
    for pod, summary, code in ((pods[0], ok, 0), (pods[1], failed, 1)):
        bind(cluster, pod, NODE)
        simulate_init_termination(cluster, pod, summary.compact_json(), warmer_exit_code=code)
    return wait_for("both runs in /metrics", lambda: (text := operator.metrics())
                    and 'outcome="failed"' in text and 'outcome="succeeded"' in text and text, timeout_s=60)


def sample(text: str, name: str, **labels: str) -> float:
    families, _ = parse(text)
    for fam in families.values():
        for n, ls, v in fam.samples:
            if n == name and all(ls.get(k) == want for k, want in labels.items()):
                return v
    raise AssertionError(f"no sample {name}{labels}")


def test_live_metrics_pass_promtool_and_the_strict_check(cluster, exposition, tmp_path):
    families, problems = parse(exposition)
    assert problems == [], problems
    assert convention_problems(families) == [], convention_problems(families)
    ours = [n for n in families if n.startswith("kernel_warmup_")]
    assert len(ours) >= 12, ours
    if cluster.promtool is None:
        print("\npromtool is not available here (devcluster/promtool.py could not build it and none is on PATH): "
              "only the project's exposition check ran")
        return
    r = subprocess.run([str(cluster.promtool), "check", "metrics"], input=exposition, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and not r.stdout.strip() and not r.stderr.strip(), r.stdout + r.stderr
    print(f"\npromtool check metrics ({cluster.promtool}): no problems in {len(families)} families")


def test_warmup_series_answer_the_questions(exposition):
    run = {"kernelwarmup": f"{NS}/kw", "model": "Meta-Llama-3.1-8B-Instruct", "node": NODE}
    assert sample(exposition, "kernel_warmup_warmups_total", outcome="succeeded", **run) == 1
    assert sample(exposition, "kernel_warmup_warmups_total", outcome="failed", **run) == 1
    assert sample(exposition, "kernel_warmup_warmup_seconds_sum", outcome="succeeded", **run) == 41.5
    for phase, secs in (("check", 0.25), ("triton_compile", 30.0), ("flashinfer_jit", 6.0), ("flashinfer_tune", 5.0)):
        assert sample(exposition, "kernel_warmup_warmup_phase_seconds_sum", phase=phase, outcome="succeeded", **run) == secs
    assert sample(exposition, "kernel_warmup_warmup_phase_seconds_count", phase="check", outcome="failed", **run) == 1
    assert sample(exposition, "kernel_warmup_cache_checks_total", node=NODE, result="cold") == 2
    assert sample(exposition, "kernel_warmup_triton_variants_total", kernelwarmup=f"{NS}/kw", result="compiled") == 4
    assert sample(exposition, "kernel_warmup_triton_variants_total", kernelwarmup=f"{NS}/kw", result="hit") == 1
    assert sample(exposition, "kernel_warmup_warmup_failures_total", kernelwarmup=f"{NS}/kw", reason="Timeout") == 1
    assert sample(exposition, "kernel_warmup_injections_total", kind="Deployment", action="inject") >= 1
    assert sample(exposition, "kernel_warmup_leader") == 1
    assert sample(exposition, "kernel_warmup_reconcile_errors_total", reason="apply") == 0  # known reasons start at 0


# --- the chart's pack ---------------------------------------------------------------------------

KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "offset", "bool",
            "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: identifiers that are not functions,
    keywords, label names in by(...)/without(...), or anything inside {...}, [...], "..."."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    out = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        word, after = m.group(0), text[m.end():].lstrip()[:1]
        if word.lower() in KEYWORDS or after == "(" or re.fullmatch(r"\d+[smhdwy]?", word):
            continue
        out.add(word)
    return out


def test_metric_names_reader():
    expr = ('histogram_quantile(0.9, sum by (le, node) (rate(a_seconds_bucket{job="x", le!="1"}[5m]))) '
            '/ on (node) group_left sum(b_total) or absent(up) > 0.5')
    assert metric_names(expr) == {"a_seconds_bucket", "b_total", "up"}


def render_pack(cluster, tmp_path: Path) -> tuple[list[dict], Path]:
    r = subprocess.run([str(cluster.helm), "template", "kw", str(CHART), "--namespace", "kw-system", *PACK],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    docs = [d for d in yaml.safe_load_all(r.stdout) if d]
    rule = next(d for d in docs if d["kind"] == "PrometheusRule")
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    return docs, rules_file


def test_the_pack_renders_and_every_metric_it_uses_is_exported(cluster, exposition, tmp_path):
    docs, rules_file = render_pack(cluster, tmp_path)
    kinds = {d["kind"] for d in docs}
    assert {"ServiceMonitor", "PrometheusRule", "ConfigMap"} <= kinds
    monitor = next(d for d in docs if d["kind"] == "ServiceMonitor")
    service = next(d for d in docs if d["kind"] == "Service")
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"] == "metrics"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    board = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-dashboard"))
    assert board["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(board["data"]["kernel-warmup.json"])

    rules = yaml.safe_load(rules_file.read_text())["groups"][0]["rules"]
    assert {r["alert"] for r in rules} >= {"KernelWarmupFailureRate", "KernelWarmupSlow", "KernelWarmupReconcileErrors",
                                           "KernelWarmupWebhookUnavailable"}
    exprs = [r["expr"] for r in rules] + [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    families, _ = parse(exposition)
    exported = {f.name + suffix for f in families.values()
                for suffix in (("_bucket", "_sum", "_count") if f.type == "histogram" else ("",))}
    used = set().union(*(metric_names(e) for e in exprs))
    assert used and used <= exported, f"used by the pack but not exported: {sorted(used - exported)}"
    if cluster.promtool is None:
        print("\npromtool is not available here: the rules were rendered and their metrics checked, not linted")
        return
    r = subprocess.run([str(cluster.promtool), "check", "rules", str(rules_file)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr
