"""Exception types raised by biograd's public API.

Every user-facing error is a subclass of :class:`BiogradError` so callers can catch the whole
family; each subclass also derives from the closest built-in (``ValueError``, ``TypeError``) so
ordinary ``except ValueError`` code keeps working.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class BiogradError(Exception):
    """Base class of every error biograd raises on bad input."""


class ConfigError(BiogradError, ValueError):
    """A configuration key, value or type is wrong (unknown key, negative rate, ...)."""


class UnknownNameError(ConfigError, KeyError):
    """A rule, model, dataset or loss name that is not registered."""

    def __str__(self) -> str:  # KeyError would otherwise repr() the message
        return str(self.args[0]) if self.args else ""


class UnsupportedModelError(BiogradError, TypeError):
    """A rule was given a model (or layer) it cannot train."""


class InputError(BiogradError, ValueError):
    """A tensor passed to a rule has the wrong shape, dtype or label range."""


class DataError(BiogradError, RuntimeError):
    """A dataset is missing, corrupt or cannot be fetched."""


class CheckpointError(BiogradError, RuntimeError):
    """A checkpoint is missing, truncated or tampered with."""


def close_matches(name: str, choices: Iterable[str]) -> str:
    """Return a ' Did you mean ...?' hint (or '') for ``name`` among ``choices``."""
    hits = difflib.get_close_matches(name, list(choices), n=3, cutoff=0.5)
    return f" Did you mean {', '.join(repr(h) for h in hits)}?" if hits else ""


def unknown_name(kind: str, name: str, choices: Iterable[str]) -> UnknownNameError:
    """Build the standard 'unknown X' error listing valid names and close matches."""
    choices = sorted(choices)
    return UnknownNameError(
        f"unknown {kind} {name!r}.{close_matches(name, choices)} "
        f"Valid {kind}s: {', '.join(choices)}."
    )
