"""The README's Python examples run as written, and its generated sections are current."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _python_blocks() -> list[str]:
    blocks = []
    for match in re.finditer(r"(<!-- readme-test: skip[^>]*-->\n)?```python\n(.*?)```", README, re.S):
        if not match.group(1):
            blocks.append(match.group(2))
    return blocks


def test_readme_python_examples_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    blocks = _python_blocks()
    assert len(blocks) >= 2
    for block in blocks:  # blocks build on each other, as a reader runs them
        exec(compile(block, "README.md", "exec"), namespace)


def test_readme_variant_table_is_current():
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "update_readme.py"), "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
