"""What the Dockerfile must do without a Docker daemon to try it: build with the legacy builder too,
and find Python's headers (fastBPE compiles against them) or say in one line that the base lacks them."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

DOCKERFILE = Path(__file__).resolve().parents[2] / "Dockerfile"


def _instructions() -> list[str]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_no_instruction_needs_buildkit() -> None:
    # The legacy builder refuses RUN --mount (and heredocs); COPY --from of a stage it supports.
    assert [i for i in _instructions() if re.match(r"RUN\s+--", i) or "<<" in i] == []


def test_header_probe_fails_where_python_h_is_missing(tmp_path: Path) -> None:
    [probe] = re.findall(r"probe='([^']+)'", DOCKERFILE.read_text(encoding="utf-8"))
    assert subprocess.run([sys.executable, "-c", probe]).returncode == 0   # this Python has its headers
    # Point sysconfig's include directory at an empty one: the probe must fail, so the build installs
    # python3-dev, then stops with its one-line error if that did not help.
    fake = f"import sysconfig; real = sysconfig.get_paths; sysconfig.get_paths = lambda: {{**real(), 'include': '{tmp_path}'}}\n"
    assert subprocess.run([sys.executable, "-c", fake + probe]).returncode == 1
