"""The single exception type that the io layer raises for bad input."""

from __future__ import annotations

import os

__all__ = ["StackError"]


class StackError(ValueError):
    """A file cannot be read or written as a particle stack.

    ``str(err)`` is exactly one line, ``"<path>: <problem>"``, so that the command line
    can print it as is and napari can show it in a notification.

    Parameters
    ----------
    path : str or os.PathLike
        The file the user named (or the file being written).
    problem : str
        What is wrong, in words; newlines are folded so the message stays one line.
    """

    def __init__(self, path: str | os.PathLike[str], problem: str) -> None:
        self.path = os.fspath(path)
        self.problem = " ".join(str(problem).split())
        super().__init__(f"{self.path}: {self.problem}")

    def __reduce__(self) -> tuple[type[StackError], tuple[str, str]]:
        # Exceptions pickle through ``self.args``; ours has two constructor arguments, so
        # say how to rebuild it (needed when errors cross process boundaries).
        return (type(self), (self.path, self.problem))
