"""`make docs`: every relative link in README.md and docs/ resolves, every Python block parses."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
BLOCK = re.compile(r"```python\n(.*?)```", re.S)


def problems() -> list[str]:
    found: list[str] = []
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    for page in pages:
        text = page.read_text()
        for target in LINK.findall(text):
            if "://" in target or target.startswith("#"):
                continue
            path = (page.parent / target.split("#", 1)[0]).resolve()
            if not path.exists():
                found.append(f"{page.relative_to(ROOT)}: broken link {target}")
        for number, block in enumerate(BLOCK.findall(text), 1):
            try:
                ast.parse(block)
            except SyntaxError as exc:
                found.append(f"{page.relative_to(ROOT)}: python block {number}: {exc}")
    return found


def main() -> int:
    found = problems()
    for line in found:
        print(line)
    print(f"docs: {len(found)} problem(s)")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
