"""Exceptions that carry what went wrong, with which slide, and what the user can do about it."""

from __future__ import annotations


class MsamilError(Exception):
    """Base class: every error msamil raises on purpose says what to do next."""


class SlideError(MsamilError):
    """A slide cannot be used. `reason` is short (it goes into excluded.tsv), `fix` tells the user what to do."""

    def __init__(self, slide: str, reason: str, fix: str = "") -> None:
        self.slide = slide
        self.reason = reason
        self.fix = fix
        msg = f"slide {slide!r}: {reason}"
        if fix:
            msg += f" (fix: {fix})"
        super().__init__(msg)


class ConfigError(MsamilError):
    """A configuration value is wrong; the message names the key."""
