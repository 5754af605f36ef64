"""The error of a job that cannot start (apart from :mod:`.preflight`, so that the modules
preflight uses can raise it without importing preflight back)."""

from __future__ import annotations


class PreflightError(ValueError):
    """The job cannot start; the message says what to change."""
