"""User-facing errors: problems a user can fix, reported as one line instead of a traceback."""
from __future__ import annotations

import sys
from typing import Callable


class UserError(Exception):
    """Bad input or configuration. The message says what is wrong and how to fix it, in one line."""


class DataError(UserError):
    """A corpus, vocab or shard that cannot be used as given."""


def run_cli(main: Callable[[], int | None]) -> int:
    """Run a CLI entry point, turning a UserError into `error: ...` on stderr and exit code 2."""
    try:
        return main() or 0
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
