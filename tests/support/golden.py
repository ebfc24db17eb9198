"""Golden files: compare a built document with its expected file, or rewrite the file
when ``KW_REGENERATE_GOLDEN=1`` (after a deliberate change, reviewed in the diff)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def assert_golden(path: Path, doc: Any) -> None:
    if os.environ.get("KW_REGENERATE_GOLDEN") == "1":
        path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    assert doc == json.loads(path.read_text())
