"""Who may make the operator change what (issue 11, items 1-3 and 8), decided purely:
opt-in on the workload, images and hostPath folders from the install-time policy, Pod
Security levels, reserved names, drift."""

from __future__ import annotations

import pytest
from support.ssa import apply_fragment

from warmup_operator.config import OperatorConfig
from warmup_operator.core import names
from warmup_operator.core.decide import CRRecord, decide
from warmup_operator.core.kinds import DEPLOYMENT
from warmup_operator.core.trust import OPT_IN, TrustPolicy, check_hostpath, clean_abs_path, image_allowed

pytestmark = pytest.mark.reliability


def workload(opt_in=None, opt_in_as="annotations", init=None, volumes=None):
    c = {"name": "vllm", "image": "vllm/vllm-openai:v0.11.0", "resources": {"limits": {"nvidia.com/gpu": 1}}}
    spec = {"containers": [c]}
    if init:
        spec["initContainers"] = init
    if volumes:
        spec["volumes"] = volumes
    meta = {"name": "llm", "namespace": "ns", "labels": {"app": "vllm"}}
    if opt_in:
        meta.setdefault(opt_in_as, {})[OPT_IN] = opt_in
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta,
            "spec": {"template": {"metadata": {"labels": {"app": "vllm"}}, "spec": spec}}}


def cr(name="kw", **spec):
    s = {"targets": {"names": ["llm"]}, "model": {"configPath": "/m/config.json"}}
    s.update(spec)
    return CRRecord(name=name, namespace="ns", uid=name, created="2026-01-01T00:00:00Z", spec=s)


def applied(obj, d):
    out = dict(obj)
    out["spec"] = {"template": apply_fragment(obj["spec"]["template"], d.body["spec"]["template"])}
    return out


# --- item 1: opt-in -----------------------------------------------------------------------


def test_selected_without_opt_in_changes_nothing_and_says_why():
    d = decide(DEPLOYMENT, workload(), [cr()])
    assert d.action == "none" and d.body is None
    assert d.error.reason == "NotOptedIn" and OPT_IN in str(d.error) and "kubectl label deployment llm" in str(d.error)


@pytest.mark.parametrize("where", ["labels", "annotations"])
def test_opt_in_by_label_or_annotation(where):
    assert decide(DEPLOYMENT, workload("kw", where), [cr()]).action == "inject"


def test_opt_in_names_exactly_one_kernelwarmup():
    d = decide(DEPLOYMENT, workload("other"), [cr("kw")])
    assert d.action == "none" and "'other'" in str(d.error)


def test_withdrawn_opt_in_removes_the_injection():
    obj = applied(workload("kw"), decide(DEPLOYMENT, workload("kw"), [cr()]))
    obj["metadata"] = workload()["metadata"]
    d = decide(DEPLOYMENT, obj, [cr()])
    assert d.action == "remove" and d.error.reason == "NotOptedIn"


# --- item 2: images -------------------------------------------------------------------------


def test_warmer_image_only_from_the_allow_list():
    policy = TrustPolicy(warmer_images=("registry.local/ml/*", "exact.example/w:1"))
    d = decide(DEPLOYMENT, workload("kw"), [cr(warmer={"image": "evil.example/x:1"})], policy=policy)
    assert d.action == "none" and d.error.reason == "ImageNotAllowed" and d.error.field == "spec.warmer.image"
    for ok in ("registry.local/ml/warmer:2", "exact.example/w:1"):
        d = decide(DEPLOYMENT, workload("kw"), [cr(warmer={"image": ok})], policy=policy)
        warmer = d.body["spec"]["template"]["spec"]["initContainers"][1]
        assert d.action == "inject" and warmer["image"] == ok
    assert not image_allowed("exact.example/w:12", policy.warmer_images)
    assert not image_allowed("registry.local/mlx/w", policy.warmer_images)


def test_by_default_no_override_image_is_allowed():
    d = decide(DEPLOYMENT, workload("kw"), [cr(warmer={"image": "registry.local/ml/w:1"})])
    assert d.error.reason == "ImageNotAllowed" and "none: the warmer always runs in the serving image" in str(d.error)


def test_bootstrap_image_is_the_operators_only():
    d = decide(DEPLOYMENT, workload("kw"), [cr(warmer={"bootstrapImage": "evil.example/b:1"})],
               default_bootstrap_image="registry.local/kw:1")
    boot = d.body["spec"]["template"]["spec"]["initContainers"][0]
    assert boot["name"] == names.BOOTSTRAP_CONTAINER and boot["image"] == "registry.local/kw:1"


# --- issue 25 item 1: the warmer's interpreter ----------------------------------------------


def warmer_of(d):
    return next(c for c in d.body["spec"]["template"]["spec"]["initContainers"] if c["name"] == names.WARMER_CONTAINER)


@pytest.mark.parametrize("python", ["/kernel-warmup-cache/x", "../../../tmp/x", "/tmp/x", "python3.9x", "/usr/bin/python3"])
def test_an_interpreter_the_installer_did_not_list_is_refused(python):
    d = decide(DEPLOYMENT, workload("kw"), [cr(warmer={"python": python})])
    assert d.action == "none" and d.body is None
    assert d.error.reason == "PythonNotAllowed" and d.error.field == "spec.warmer.python"
    assert "warmer.allowedPythons" in str(d.error) and "serving container's own Python" in str(d.error)


def test_a_listed_interpreter_is_run():
    policy = TrustPolicy(warmer_pythons=("python3", "/opt/venv/bin/python3"))
    for python in policy.warmer_pythons:
        d = decide(DEPLOYMENT, workload("kw"), [cr(warmer={"python": python})], policy=policy)
        assert d.action == "inject" and warmer_of(d)["command"][0] == python


@pytest.mark.parametrize("command, python", [
    (None, "python3"),
    (["vllm", "serve", "m"], "python3"),
    (["/opt/venv/bin/python3", "-m", "vllm.entrypoints.openai.api_server"], "/opt/venv/bin/python3"),
    (["python3.12", "-m", "vllm.entrypoints.openai.api_server"], "python3.12"),
    (["sh", "-c", "python3 -m vllm.entrypoints.openai.api_server"], "python3"),
    (["./venv/bin/python", "-m", "vllm"], "python3"),  # relative to the working dir: not taken
])
def test_unset_the_interpreter_is_the_serving_containers_own(command, python):
    obj = workload("kw")
    if command:
        obj["spec"]["template"]["spec"]["containers"][0]["command"] = command
    d = decide(DEPLOYMENT, obj, [cr()])
    assert d.action == "inject" and warmer_of(d)["command"][0] == python


def test_install_time_interpreters_are_names_or_clean_paths():
    cfg = OperatorConfig.from_args(["--allow-warmer-python", "python3.12", "--allow-warmer-python", "/opt/py/bin/python"],
                                   env={})
    assert cfg.policy.warmer_pythons == ("python3.12", "/opt/py/bin/python")
    assert OperatorConfig.from_args([], env={}).policy.warmer_pythons == ("python3", "python")
    for bad in ("py", "/opt/../tmp/python", "bin/python3"):
        with pytest.raises(SystemExit):
            OperatorConfig.from_args(["--allow-warmer-python", bad], env={})


# --- item 3: hostPath ------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/etc", "/var/run", "/proc", "/var/lib/kubelet", "//var/cache/kernel-warmup",
                                  "/var/cache/kernel-warmup/.", "/var/cache/kernel-warmup/../../etc",
                                  "/var/cache/kernel-warmup/", "/var/cache/kernel-warmup/sub", "/var/cache"])
def test_hostpath_outside_the_allow_list_is_refused(path):
    d = decide(DEPLOYMENT, workload("kw"), [cr(cache={"hostPath": {"path": path}})])
    assert d.action == "none" and d.error.reason == "HostPathNotAllowed" and d.error.field == "spec.cache.hostPath.path"


def test_allowed_hostpath_is_mounted():
    d = decide(DEPLOYMENT, workload("kw"), [cr(cache={"hostPath": {"path": "/var/cache/kernel-warmup"}})])
    vol = next(v for v in d.body["spec"]["template"]["spec"]["volumes"] if v["name"] == names.CACHE_VOLUME)
    assert d.action == "inject" and vol["hostPath"]["path"] == "/var/cache/kernel-warmup/namespaces/ns"  # its namespace's folder
    with pytest.raises(ValueError):
        check_hostpath({"hostPath": {"path": "/var/cache/kernel-warmup"}}, TrustPolicy(hostpath_allowed=()))


@pytest.mark.parametrize("level, refused", [("baseline", True), ("restricted", True), ("privileged", False), (None, False)])
def test_pod_security_level_refusing_hostpath_is_reported(level, refused):
    labels = {"pod-security.kubernetes.io/enforce": level} if level else {}
    d = decide(DEPLOYMENT, workload("kw"), [cr(cache={"hostPath": {"path": "/var/cache/kernel-warmup"}})],
               namespace_labels=labels)
    assert (d.error is not None and d.error.reason == "HostPathRefusedByPodSecurity") == refused
    assert d.action == ("none" if refused else "inject")


def test_install_time_flags_and_env_make_the_policy():
    cfg = OperatorConfig.from_args(["--allow-warmer-image", "r.local/*", "--allow-hostpath", "/srv/kw",
                                    "--allow-hostpath", "/data/kw"], env={})
    assert cfg.policy == TrustPolicy(warmer_images=("r.local/*",), hostpath_allowed=("/srv/kw", "/data/kw"))
    assert OperatorConfig.from_args([], env={}).policy == TrustPolicy()
    env = {"KERNEL_WARMUP_ALLOWED_WARMER_IMAGES": "a/*, b:1", "KERNEL_WARMUP_ALLOWED_HOSTPATHS": ""}
    assert OperatorConfig.from_args([], env=env).policy == TrustPolicy(warmer_images=("a/*", "b:1"), hostpath_allowed=())
    with pytest.raises(SystemExit):
        OperatorConfig.from_args(["--allow-hostpath", "/srv//kw"], env={})
    assert clean_abs_path("/a/b") and not clean_abs_path("/a/../b") and not clean_abs_path("relative")


def test_metrics_listen_on_the_pod_ip_or_loopback():
    assert OperatorConfig.from_args([], env={}).metrics_bind == "127.0.0.1"
    assert OperatorConfig.from_args([], env={"POD_IP": "10.1.2.3"}).metrics_bind == "10.1.2.3"
    assert OperatorConfig.from_args(["--metrics-bind", "0.0.0.0"], env={"POD_IP": "10.1.2.3"}).metrics_bind == "0.0.0.0"


# --- item 8: reserved names; item 9: drift -----------------------------------------------------


@pytest.mark.parametrize("init, volumes", [
    ([{"name": names.WARMER_CONTAINER, "image": "mine"}], None),
    ([{"name": names.BOOTSTRAP_CONTAINER, "image": "mine"}], None),
    (None, [{"name": names.CACHE_VOLUME, "emptyDir": {}}]),
    (None, [{"name": names.PKG_VOLUME, "emptyDir": {}}]),
])
def test_a_users_entry_with_a_reserved_name_is_refused(init, volumes):
    d = decide(DEPLOYMENT, workload("kw", init=init, volumes=volumes), [cr()])
    assert d.action == "none" and d.body is None and d.error.reason == "ReservedName"


def test_drift_with_the_hash_left_behind_is_reinjected():
    obj = applied(workload("kw"), decide(DEPLOYMENT, workload("kw"), [cr()]))
    assert decide(DEPLOYMENT, obj, [cr()]).action == "none"
    tspec = obj["spec"]["template"]["spec"]
    tspec["initContainers"] = [c for c in tspec["initContainers"] if c["name"] != names.WARMER_CONTAINER]
    d = decide(DEPLOYMENT, obj, [cr()])
    assert d.action == "inject" and d.error is None


# --- item 10: one cache, one mount path --------------------------------------------------------


def cache_cr(name, ns, created, mount, source):
    s = {"targets": {"names": ["llm"]}, "model": {"configPath": "/m/config.json"}, "cache": {"mountPath": mount, **source}}
    return CRRecord(name=name, namespace=ns, uid=name, created=created, spec=s)


HP = {"hostPath": {"path": "/var/cache/kernel-warmup"}}


@pytest.mark.parametrize("other_ns, other_source, refused", [
    ("ns", HP, True),  # a node folder is one cache per namespace
    ("elsewhere", HP, False),  # another namespace's sub-folder: another cache, no squatting (issue 25)
    ("ns", {"persistentVolumeClaim": {"claimName": "c"}}, False),
    ("elsewhere", {"emptyDir": {}}, False),
])
def test_a_cache_mounted_at_another_path_by_an_older_kernelwarmup_is_refused(other_ns, other_source, refused):
    older = cache_cr("first", other_ns, "2026-01-01T00:00:00Z", "/cache-a", other_source)
    newer = cache_cr("kw", "ns", "2026-02-01T00:00:00Z", "/cache-b", HP)
    d = decide(DEPLOYMENT, workload("kw"), [newer], cluster_crs=[older, newer])
    assert (d.error is not None and d.error.reason == "CacheMountPathConflict") == refused
    if refused:
        assert "/cache-a" in str(d.error) and "ns/first" in str(d.error) and d.action == "none"
        assert "hostPath /var/cache/kernel-warmup, namespace ns's folder" in str(d.error)


def test_the_older_kernelwarmup_keeps_its_mount_path_and_a_same_path_peer_is_fine():
    older = cache_cr("kw", "ns", "2026-01-01T00:00:00Z", "/cache-a", HP)
    newer = cache_cr("second", "ns", "2026-02-01T00:00:00Z", "/cache-b", HP)
    assert decide(DEPLOYMENT, workload("kw"), [older], cluster_crs=[older, newer]).action == "inject"
    same = cache_cr("third", "ns", "2025-01-01T00:00:00Z", "/cache-a", HP)
    assert decide(DEPLOYMENT, workload("kw"), [older], cluster_crs=[older, same]).action == "inject"


def test_a_node_folder_is_mounted_as_the_namespaces_own_sub_folder():
    """Issue 25 item 2: every namespace's servers shared one read-write node folder, so one
    tenant could plant code another's vLLM loads; now each namespace mounts its own."""
    for ns in ("team-a", "team-b"):
        cr = CRRecord(name="kw", namespace=ns, uid="u" + ns, created="2026-01-01T00:00:00Z",
                      spec={"targets": {"names": ["llm"]}, "model": {"configPath": "/m/config.json"},
                            "cache": {"hostPath": {"path": "/var/cache/kernel-warmup"}}})
        obj = workload("kw")
        obj["metadata"]["namespace"] = ns
        d = decide(DEPLOYMENT, obj, [cr])
        vol = next(v for v in d.body["spec"]["template"]["spec"]["volumes"] if v["name"] == names.CACHE_VOLUME)
        assert d.action == "inject" and vol["hostPath"] == {"path": f"/var/cache/kernel-warmup/namespaces/{ns}",
                                                            "type": "DirectoryOrCreate"}


def test_prewarm_bounds_from_flags_and_env_are_counts():
    from warmup_operator.core.prewarm import JobBounds
    assert OperatorConfig.from_args([], env={}).prewarm_bounds == JobBounds(64, 128)
    assert OperatorConfig.from_args(["--prewarm-max-jobs", "0"], env={}).prewarm_bounds.per_kernelwarmup == 0
    assert OperatorConfig.from_args([], env={"KERNEL_WARMUP_PREWARM_MAX_JOBS": "8"}).prewarm_bounds.per_kernelwarmup == 8
    for argv, env in ((["--prewarm-max-jobs", "-1"], {}), ([], {"KERNEL_WARMUP_PREWARM_MAX_JOBS_PER_NAMESPACE": "-5"})):
        with pytest.raises(SystemExit):
            OperatorConfig.from_args(argv, env=env)
