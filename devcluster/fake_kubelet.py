"""What a kubelet would report for a Pod's finished init containers.

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
