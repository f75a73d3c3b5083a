"""Real faults for CLI tests: read-only bind mounts, a full tmpfs, a file-size limit and root without the
capabilities that let it ignore file permissions, each applied to one child process only (we are root:
`unshare -m` gives the child its own mount table, `setpriv` drops capabilities from its bounding set)."""
from __future__ import annotations

import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from tests.pretrain.processes import REPO, TIMEOUT_S, process_env

# Without these root is bound by file modes like any user (fowner: chmod/utime on others' files).
NO_DAC = ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner", "--"]


@dataclass(frozen=True)
class Outcome:
    code: int
    stdout: str
    stderr: str

    @property
    def errors(self) -> list[str]:
        """Our `error: ...` lines and argparse's `PROG: error: ...`."""
        return [line for line in self.stderr.splitlines() if line.startswith("error:") or ": error: " in line]

    def assert_one_line_error(self, *needles: str) -> str:
        """Exit status 2, no traceback, exactly one `error:` line, holding every needle; returns it."""
        assert self.code == 2, (self.code, self.stderr[-3000:])
        assert "Traceback" not in self.stderr + self.stdout, self.stderr[-3000:]
        assert len(self.errors) == 1, self.stderr[-3000:]
        line = self.errors[0]
        for needle in needles:
            assert needle in line, (needle, line)
        return line


def python(args: Sequence[str], *, wrap: str = "", prefix: Sequence[str] = (), env: dict[str, str] | None = None,
           timeout: float = TIMEOUT_S) -> Outcome:
    """Run `python ARGS` from the repository root. `wrap` is shell run first in the child's own mount
    namespace (mounts, ulimit); `prefix` goes before python (e.g. NO_DAC)."""
    command = shlex.join([*prefix, sys.executable, *args])
    argv = ["unshare", "-m", "sh", "-c", f"{wrap}\nexec {command}"] if wrap else ["sh", "-c", f"exec {command}"]
    proc = subprocess.run(argv, cwd=REPO, env=process_env(env), text=True, capture_output=True, timeout=timeout)
    return Outcome(proc.returncode, proc.stdout, proc.stderr)


def read_only(path: Path) -> str:
    """Shell for `wrap`: `path` becomes a read-only bind mount of itself."""
    quoted = shlex.quote(str(path))
    return f"mount --bind {quoted} {quoted} && mount -o remount,ro,bind {quoted}"


def small_tmpfs(path: Path, size_kb: int) -> str:
    """Shell for `wrap`: a `size_kb` tmpfs mounted on `path` (which must exist)."""
    return f"mount -t tmpfs -o size={size_kb}k tmpfs {shlex.quote(str(path))}"


def file_size_limit(kb: int) -> str:
    """Shell for `wrap`: no file may grow past `kb` KiB (writes past it fail with EFBIG)."""
    return f"ulimit -f {kb}"
