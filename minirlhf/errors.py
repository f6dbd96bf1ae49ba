"""The exceptions a caller acts on, in a module that imports nothing heavy (the Prefect tasks' retry
conditions import it without torch).

Usage:
    from minirlhf.errors import MissingInput, PPOUnstable, UnusableInput, UserError
    raise UserError("configs/x.yaml: not valid YAML (line 3, column 5): ...")   # the CLI prints one line, exits 2
    raise MissingInput("no HH-RLHF data at ...")   # a UserError that is also a FileNotFoundError
    raise UnusableInput("x.jsonl.gz: not gzip data ...")   # a UserError that is also a ValueError
"""

from __future__ import annotations

from pathlib import Path


class UserError(Exception):
    """Something the user fixes (a file, a path, a value): its message is one line that names the file or field
    and says what to do. The CLI prints it without a traceback and exits with code 2."""


class MissingInput(UserError, FileNotFoundError):
    """A file or folder the user named is not there. Still a FileNotFoundError, for callers that catch that."""


class UnusableInput(UserError, ValueError):
    """A file the user named is there but cannot be used: the wrong kind, not decodable, no usable rows. Still a
    ValueError, for callers that catch that."""


def one_line(message: str) -> str:
    """`message` on one line (a user error is printed as exactly one line): its lines joined with '; '."""
    return "; ".join(line.strip() for line in str(message).splitlines() if line.strip())


class PPOUnstable(RuntimeError):
    """The run became numerically unstable; retry from `last_good_checkpoint` (None: from the start)."""

    def __init__(self, cause: str, step: int, last_good_checkpoint: Path | None, detail: str = ""):
        self.cause, self.step, self.last_good_checkpoint = cause, step, last_good_checkpoint
        where = last_good_checkpoint or "none (the run restarts from the SFT model)"
        super().__init__(f"PPO unstable at step {step}: {cause}{' (' + detail + ')' if detail else ''}; "
                         f"last good checkpoint: {where}")

    def __reduce__(self):  # picklable with its fields (a Prefect state or a Ray worker may carry it)
        return (type(self), (self.cause, self.step, self.last_good_checkpoint))
