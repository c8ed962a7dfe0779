"""User errors: what ``detforge`` prints as one line ``detforge CMD: MESSAGE`` (exit status 2) instead of a traceback.

A user error is one the user can fix: a missing or corrupt file, an unknown name, a bad option value, bad data.
Code that validates user input raises :class:`UserError` (or a subclass; ``raise ... from err`` keeps the
cause for ``--verbose``), and the error classes the user can fix elsewhere (``RunError``,
``WeightMappingError``, ``WeightsUnavailableError``, ``PretrainedWeightsError``) subclass it, so the command
line needs one test: :func:`find_user_error`. A bug in detforge (any other ``ValueError``, ``RuntimeError``,
...) keeps its traceback.

This module imports nothing heavy: ``detforge.cli`` loads it for every command.
"""

from __future__ import annotations

import json
import pickle
import re

__all__ = [
    "DataError",
    "InvalidValueError",
    "MissingFileError",
    "UserError",
    "exit_status",
    "find_user_error",
    "user_message",
]


class UserError(Exception):
    """An error the user can fix; ``str(err)`` is one line naming the file, option or name at fault.
    ``detforge`` prints it as ``detforge CMD: MESSAGE`` and exits with ``exit_status`` (2)."""

    exit_status: int = 2


class InvalidValueError(UserError, ValueError):
    """A value the user gave (a model name, an option value, a checkpoint) is not valid; a ``ValueError`` too,
    for callers that catch one."""


class DataError(InvalidValueError):
    """A data set named by ``--data`` cannot be read: a malformed spec, a truncated or malformed annotation
    file. The message names the file."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder the user named does not exist (a checkpoint, images to predict on); a
    ``FileNotFoundError`` too."""


FILE_ERRORS: tuple[type[BaseException], ...] = (
    FileNotFoundError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
    json.JSONDecodeError,
    pickle.UnpicklingError,
    EOFError,
)
"""Errors of reading a file, taken as the user's file (a path the user gave, a file it names): user errors
when they reach the command line themselves or as the explicit cause (``raise ... from err``) of what does.
Not followed through an implicit ``__context__``: an error raised while handling one is a different error."""


def _chain(err: BaseException) -> list[tuple[BaseException, bool]]:
    """``err`` and the exceptions behind it, outermost first, as Python's traceback shows them (``__cause__``,
    else ``__context__`` unless suppressed), each with whether it is reached through ``__cause__`` links only."""
    chain: list[tuple[BaseException, bool]] = []
    seen: set[int] = set()
    current: BaseException | None = err
    explicit = True
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        chain.append((current, explicit))
        if current.__cause__ is not None:
            current = current.__cause__
        else:
            explicit = False
            current = None if current.__suppress_context__ else current.__context__
    return chain


def find_user_error(err: BaseException) -> BaseException | None:
    """The user error behind ``err``, or None when ``err`` is not one (a bug: show its traceback).

    The innermost :class:`UserError` in ``err``'s ``__cause__`` / ``__context__`` chain (Lightning and
    jsonargparse wrap the error a data module or model raised in their own), else the outermost
    :data:`FILE_ERRORS` error reached through ``__cause__`` links."""
    chain = _chain(err)
    users = [e for e, _ in chain if isinstance(e, UserError)]
    if users:
        return users[-1]
    return next((e for e, explicit in chain if explicit and isinstance(e, FILE_ERRORS)), None)


_WORKER_LAST_LINE = re.compile(r"^[\w.]+: (?P<message>.+)$")


def user_message(err: BaseException) -> str:
    """One line for the console: the first line of ``err``'s message; ``PATH: No such file or directory``
    for an ``OSError`` with a file name; a DataLoader worker's error (re-raised in the main process with
    the worker's traceback as its message) as the message at the end of that traceback."""
    if isinstance(err, OSError) and err.filename is not None and err.strerror:
        return f"{err.filename}: {err.strerror}"
    text = str(err).strip()
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].startswith("Caught ") and "Original Traceback" in text:
        match = _WORKER_LAST_LINE.match(lines[-1].strip())
        if match:
            return match["message"]
    return lines[0].strip() if lines else type(err).__name__


def exit_status(err: BaseException) -> int:
    """The exit status for user error ``err``: its class's ``exit_status`` (2; 1 for an offline run without
    the weights file), 2 for a file error."""
    return int(getattr(err, "exit_status", 2))
