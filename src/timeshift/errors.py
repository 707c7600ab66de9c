"""The base class of the errors timeshift raises on purpose.

Every error the project raises for a condition the user can fix (a bad checkpoint, config,
annotation file or video, a failed export, a diverged run) derives from :class:`TimeshiftError`.
The command line prints those as one line and exits with status 2 (``-v`` shows the traceback);
anything else is a bug and keeps its traceback. Each subclass also keeps the builtin base it had
before (``RuntimeError``, ``ValueError``), so ``except ValueError`` around a config load still
works.
"""

from __future__ import annotations

__all__ = ["TimeshiftError"]


class TimeshiftError(RuntimeError):
    """A condition the user can fix; the message says what was wrong and what to do."""
