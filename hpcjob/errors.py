"""The one exception type hpcjob raises for anything a user can act on."""

from __future__ import annotations


class HpcjobError(Exception):
    """A problem the user can fix: a message in their words, an optional hint, an exit code."""

    def __init__(self, message: str, hint: str | None = None, exit_code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.exit_code = exit_code

    def __str__(self) -> str:
        return self.message if self.hint is None else f"{self.message}\nHint: {self.hint}"


# Exit codes (DESIGN.md): 0 ok, 1 HpcjobError, 2 usage/validation,
# 3 a waited-on job ended in a state other than COMPLETED.
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_JOB_FAILED = 3
