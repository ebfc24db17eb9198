"""Kubernetes resource quantities ("500m", "8Gi", "1e3") as numbers, and the bounds a
KernelWarmup author may ask for (pure)."""

from __future__ import annotations

import re
from typing import Any, Optional

_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")
_SUFFIX = {None: 1.0, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
           "Ki": 2.0 ** 10, "Mi": 2.0 ** 20, "Gi": 2.0 ** 30, "Ti": 2.0 ** 40, "Pi": 2.0 ** 50, "Ei": 2.0 ** 60}
GI = 2.0 ** 30


def parse(value: Any) -> Optional[float]:
    """The quantity's value in base units (cores, bytes); None if it is no quantity."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value) if value >= 0 else None
    m = _QUANTITY.match(str(value).strip()) if isinstance(value, str) else None
    return float(m.group(1)) * _SUFFIX[m.group(2)] if m else None
