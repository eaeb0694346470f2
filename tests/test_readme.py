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


def test_readme_generated_tables_are_current():
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "update_readme.py"), "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_readme_links_point_to_its_own_headings():
    text = re.sub(r"```.*?```", "", README, flags=re.S)
    anchors = {_anchor(h) for h in re.findall(r"^#{1,6} (.+)$", text, re.M)}
    links = set(re.findall(r"\]\(#([^)]+)\)", text))
    assert links, "the table of contents is gone"
    assert links <= anchors, sorted(links - anchors)


def test_readme_is_the_one_document():
    # The former docs/*.md pages live in the README now; nothing may point back at them (URLs such as
    # https://huggingface.co/docs/... are fine: only a path starting with docs/ counts).
    assert not list(ROOT.glob("docs/*.md"))
    for path in [ROOT / "README.md", *ROOT.glob("MODEL_CARDS/*.md"), *(ROOT / "src").rglob("*.py")]:
        assert not re.search(r"(?<![\w/.-])docs/", path.read_text()), path
