"""User-facing errors: problems a user can fix, reported as one line instead of a traceback."""
from __future__ import annotations

import errno
import os
import sys
from typing import Callable


class UserError(Exception):
    """Bad input or configuration. The message says what is wrong and how to fix it, in one line."""


class DataError(UserError):
    """A corpus, vocab or shard that cannot be used as given."""


_FIXES = {
    errno.EACCES: "give this user (uid {uid}) access to it or choose another path",
    errno.EPERM: "give this user (uid {uid}) access to it or choose another path",
    errno.EROFS: "the filesystem is mounted read-only: mount it read-write or choose another path",
    errno.ENOSPC: "free space on that volume or choose another one",
    errno.EDQUOT: "free space within the quota or choose another volume",
    errno.EFBIG: "the file size limit (ulimit -f) is too small: raise it",
    errno.ENOTDIR: "a component of the path is a file, not a directory: choose another path",
    errno.EISDIR: "it is a directory: name a file",
    errno.ENOENT: "check the path",
    errno.EEXIST: "remove it or choose another path",
    errno.ENAMETOOLONG: "choose a shorter path",
}


def describe_os_error(err: OSError, action: str, path: object = None) -> str:
    """One line for an OSError: `cannot ACTION PATH: CAUSE; FIX`."""
    where = path if path is not None else (err.filename or "?")
    cause = err.strerror or str(err) or type(err).__name__
    fix = _FIXES.get(err.errno or 0, "check the path and the storage it is on").format(uid=os.getuid())
    return f"cannot {action} {where}: {cause}; {fix}"


def run_cli(main: Callable[[], int | None]) -> int:
    """Run a CLI entry point, turning a UserError, or an OSError nobody described better, into
    `error: ...` on stderr and exit code 2."""
    try:
        return main() or 0
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"error: {describe_os_error(err, 'use')}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
