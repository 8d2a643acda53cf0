"""Errors that are meant to be read by a user, not by a debugger."""
import difflib
from typing import Iterable, Optional


def closest(name: str, choices: Iterable[str]) -> Optional[str]:
    """The valid name most like `name`, or None when nothing is close."""
    matches = difflib.get_close_matches(str(name), list(choices), n=1, cutoff=0.5)
    return matches[0] if matches else None


def unknown_name_message(kind: str, name: str, choices: Iterable[str], where: str = "") -> str:
    choices = sorted(choices)
    origin = f" (from {where})" if where else ""
    message = f"unknown {kind} '{name}'{origin}. Valid: {', '.join(choices)}."
    guess = closest(name, choices)
    if guess is not None:
        message += f" Did you mean '{guess}'?"
    return message


class EffdetError(Exception):
    """Base for errors whose message is complete: run.py prints it alone, without a traceback."""


class ConfigError(EffdetError):
    """A configuration value that cannot work: the message names the key, the value and what is valid."""


class CheckpointError(EffdetError):
    """A checkpoint that cannot be read or does not fit the model."""


class DataError(EffdetError):
    """A dataset that cannot be read: missing files, a label that does not fit the model, ..."""
