"""Regenerate the README sections that come from code (the variant table). `--check` fails if they are stale."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from fastfcn_hub.variants import variant_table_markdown

README = Path(__file__).resolve().parents[1] / "README.md"
SECTION = re.compile(r"(<!-- variants:start -->\n).*?(<!-- variants:end -->)", re.S)


def render(text: str) -> str:
    return SECTION.sub(lambda m: m.group(1) + variant_table_markdown() + "\n" + m.group(2), text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="exit 1 if the README is not up to date")
    args = parser.parse_args()
    text = README.read_text()
    updated = render(text)
    if args.check:
        if updated != text:
            print("README.md is stale: run `python scripts/update_readme.py`", file=sys.stderr)
            return 1
        return 0
    README.write_text(updated)
    return 0


if __name__ == "__main__":
    sys.exit(main())
