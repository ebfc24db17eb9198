"""Where `run` is running: inside a Kubernetes Pod, or on someone's machine (stdlib only).

Inside a Pod the kubelet reads the container's termination message from
``/dev/termination-log`` and the operator always passes the cache folder in the spec. On
a workstation neither holds: writing ``/dev/termination-log`` there (as root it would
create a file in /dev) or warming a default ``/kernel-warmup-cache`` nobody asked for
would be surprising, so both need to be asked for.
"""

from __future__ import annotations

import os
from typing import Mapping, Optional

POD_TERMINATION_LOG = "/dev/termination-log"


def in_pod(env: Mapping[str, str] = os.environ) -> bool:
    """Every container of a Pod gets KUBERNETES_SERVICE_HOST from the kubelet."""
    return bool(env.get("KUBERNETES_SERVICE_HOST"))


def termination_path(flag: Optional[str], env: Mapping[str, str] = os.environ) -> Optional[str]:
    """Where to write the summary for the kubelet: the flag's path when given, the Pod's
    termination log inside a Pod, else nowhere."""
    if flag:
        return flag
    return POD_TERMINATION_LOG if in_pod(env) else None
