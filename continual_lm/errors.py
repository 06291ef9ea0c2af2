"""User-facing errors: each names what was wrong and what was expected."""
from __future__ import annotations

import difflib
from typing import Iterable


class ContinualLMError(Exception):
    """An error caused by user input (options, files, data). The CLI prints it without a traceback."""


def unknown_choice(what: str, value: str, choices: Iterable[str]) -> ContinualLMError:
    """Error for an unknown name, with close-match suggestions, e.g. unknown_choice("method", "inclra", METHODS)."""
    choices = sorted(set(choices))
    close = difflib.get_close_matches(str(value), choices, n=3, cutoff=0.5)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return ContinualLMError(f"unknown {what} {value!r}; expected one of: {', '.join(choices)}.{hint}")
