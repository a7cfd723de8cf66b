"""What tsctl's exit code means, and the error a command raises to end with one.

Beside the CLI (tsctl.py) rather than in it: every command module raises
RolloutFailed, and tsctl imports them all, so the codes live where both can reach.
"""

from __future__ import annotations

from enum import IntEnum


class Exit(IntEnum):
    """What the CLI's exit code means."""

    OK = 0
    REFUSED = 1        # the gate refused the candidate, or there is nothing to roll back to
    USAGE = 2          # bad arguments, config or archive
    SERVER = 3         # TorchServe is unreachable or answered an error
    UNAUTHORIZED = 4   # token authorization is on and the key is missing or wrong
    MODEL_API_OFF = 5  # register/unregister need enable_model_api=true


class RolloutFailed(Exception):
    """A step refused or failed; `code` is the exit code tsctl ends with."""

    def __init__(self, code: Exit, message: str) -> None:
        super().__init__(message)
        self.code = code
