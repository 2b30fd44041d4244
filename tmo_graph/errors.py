"""One error type for everything a user can get wrong, with the fix in the message."""

from __future__ import annotations


class TmoGraphError(Exception):
    """A problem the user can fix: the message names what was wrong and how to fix it.

    The CLI prints ``str(error)`` on one line and exits with status 2, never a traceback.
    """

    def __init__(self, problem: str, fix: str | None = None) -> None:
        self.problem = problem
        self.fix = fix
        super().__init__(f"{problem}. Fix: {fix}" if fix else problem)
