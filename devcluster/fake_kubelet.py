"""What a kubelet (and a scheduler) would report for Pods: finished init containers, a finished
Job Pod, an unschedulable Pod, a binding to a node.

The local control plane has no kubelet, so the demo and the tests write this status patch
themselves to show the operator a warmer's termination message.
"""

from __future__ import annotations

import time


def init_containers_terminated(pod: dict, warmer_name: str, warmer_message: str,
                               warmer_exit_code: int = 0) -> dict:
    """The status-subresource patch: every init container terminated, the warmer with
    ``warmer_message`` as its termination message and ``warmer_exit_code``."""
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    statuses = []
    for c in pod["spec"]["initContainers"]:
        msg, rc = (warmer_message, warmer_exit_code) if c["name"] == warmer_name else ("", 0)
        statuses.append({"name": c["name"], "image": c["image"], "imageID": "", "ready": False, "restartCount": 0,
                         "state": {"terminated": {"exitCode": rc, "reason": "Completed" if rc == 0 else "Error",
                                                  "message": msg, "startedAt": now, "finishedAt": now}}})
    return {"status": {"initContainerStatuses": statuses}}


def pod_finished(pod: dict, container: str, message: str, exit_code: int = 0) -> dict:
    """The status patch of a run-to-completion Pod (a Job's) whose init containers ended
    well and whose ``container`` ended with ``message`` and ``exit_code``: phase Succeeded
    or Failed, which the Job controller counts."""
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

    def terminated(c: dict, rc: int, msg: str) -> dict:
        return {"name": c["name"], "image": c["image"], "imageID": "", "ready": False, "restartCount": 0,
                "state": {"terminated": {"exitCode": rc, "reason": "Completed" if rc == 0 else "Error",
                                         "message": msg, "startedAt": now, "finishedAt": now}}}

    spec = pod["spec"]
    return {"status": {
        "phase": "Succeeded" if exit_code == 0 else "Failed",
        "initContainerStatuses": [terminated(c, 0, "") for c in spec.get("initContainers") or []],
        "containerStatuses": [terminated(c, exit_code if c["name"] == container else 0,
                                         message if c["name"] == container else "") for c in spec["containers"]]}}


def unschedulable(message: str) -> dict:
    """The status patch a scheduler writes when no node fits the Pod."""
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return {"status": {"conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                       "message": message, "lastTransitionTime": now}]}}


def binding(pod_name: str, node: str) -> dict:
    """A scheduler's decision: POST it to the Pod's binding subresource."""
    return {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": pod_name},
            "target": {"apiVersion": "v1", "kind": "Node", "name": node}}
