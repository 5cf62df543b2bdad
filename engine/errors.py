"""The errors a user can fix, apart from the bugs they must see.

`engine` prints a ``UsageError`` as one line (it names the file, the field and the fix) and exits 1;
any other exception is a bug in the engine and keeps its traceback. The subclasses also inherit the
built-in error a caller would expect (``FileNotFoundError``, ``FileExistsError``), so library code can
catch either.
"""

from __future__ import annotations


class UsageError(ValueError):
    """Bad input, a damaged or unfitting file, a conflicting run: fixable by the user, shown as one line."""


class MissingInputError(UsageError, FileNotFoundError):
    """A file or directory the command needs does not exist."""


class ExistingOutputError(UsageError, FileExistsError):
    """An output exists and the command will not clobber it."""
