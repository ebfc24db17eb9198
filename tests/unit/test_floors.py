"""docs/ARCHITECTURE.md's floors are `.importlinter`'s layers contracts (issue 24 item 5):
the doc's block is rendered from them, and every module of a floored package is on a floor
(a new module must be placed, so `make lint` checks its imports)."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import floors  # noqa: E402


def test_the_docs_floors_are_the_contracts():
    doc = floors.DOC.read_text()
    start, end = doc.index(floors.BEGIN), doc.index(floors.END) + len(floors.END)
    assert doc[start:end] == floors.block(), "run: python scripts/floors.py --write"


def test_every_module_is_on_a_floor():
    assert floors.unplaced() == []
    assert {c for c, _ in floors.contracts()} == {"warmup_operator", "warmup_operator.core", "kernel_warmer"}
