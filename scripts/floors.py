#!/usr/bin/env python3
"""docs/ARCHITECTURE.md's "Floors" block, rendered from `.importlinter`'s layers contracts
(the one source), and the modules of the tree that no floor names.

    python scripts/floors.py            print the block
    python scripts/floors.py --write    put it into docs/ARCHITECTURE.md between its markers
"""

from __future__ import annotations

import configparser
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs/ARCHITECTURE.md"
BEGIN, END = "<!-- floors:begin (scripts/floors.py --write) -->", "<!-- floors:end -->"
PACKAGE_DIRS = {"warmup_operator": ROOT / "operator", "kernel_warmer": ROOT / "initcontainer"}


def contracts() -> list[tuple[str, list[list[str]]]]:
    """(container, layers top to bottom, each a list of independent modules) per contract."""
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / ".importlinter")
    out = []
    for section in cfg.sections():
        c = cfg[section]
        if c.get("type") == "layers":
            layers = [[m.strip() for m in line.split("|")] for line in c["layers"].strip().splitlines() if line.strip()]
            out.append((c["containers"].strip(), layers))
    return out


def block() -> str:
    lines = [BEGIN, ""]
    for container, layers in contracts():
        floors = " > ".join(" \\| ".join(f"`{m}`" for m in layer) for layer in layers)
        lines.append(f"- `{container}`: {floors}")
    return "\n".join([*lines, "", END])


def unplaced() -> list[str]:
    """Modules and packages directly in a floored container that no floor names."""
    missing = []
    for container, layers in contracts():
        root = PACKAGE_DIRS[container.split(".")[0]] / container.replace(".", "/")
        named = {m for layer in layers for m in layer}
        here = {p.stem for p in root.glob("*.py") if p.stem != "__init__"} | {
            p.name for p in root.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
        missing += [f"{container}.{m}" for m in sorted(here - named)]
    return missing


def main(argv: list[str]) -> int:
    text = block()
    if "--write" not in argv:
        print(text)
        return 0
    doc = DOC.read_text()
    start, end = doc.index(BEGIN), doc.index(END) + len(END)
    DOC.write_text(doc[:start] + text + doc[end:])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
