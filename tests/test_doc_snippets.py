"""Every ```python block in the README and docs/ runs as written, from the repository root (a reader
copies them from there), each in a fresh process with a scratch working copy of examples/."""
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import shared_data_dir

REPO = Path(__file__).resolve().parents[1]
DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def _snippets():
    for document in DOCUMENTS:
        for number, match in enumerate(BLOCK.finditer(document.read_text()), 1):
            yield pytest.param(match.group(1), id=f"{document.relative_to(REPO)}#{number}")


def test_the_docs_have_snippets():
    assert len(list(_snippets())) >= 5


@pytest.mark.parametrize("code", list(_snippets()))
def test_snippet_runs_as_written(code, tmp_path):
    if "../shared/data" in code and not (shared_data_dir() / "300w").is_dir():
        pytest.skip("the snippet reads ../shared/data, which is absent")
    # Run where the reader would (the checkout's root, so examples/ and ../shared/data resolve), but in
    # a copy, so files the snippet writes (clip.avi, out/) do not land in the repository.
    work = tmp_path / REPO.name
    work.mkdir()
    shutil.copytree(REPO / "examples", work / "examples")
    shared = REPO.parent / "shared"
    if shared.exists():
        (tmp_path / "shared").symlink_to(shared)
    result = subprocess.run([sys.executable, "-c", code], cwd=work, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"snippet failed:\n{code}\n--- stderr ---\n{result.stderr[-3000:]}"
