"""Choosing the state backend the settings name."""

from __future__ import annotations

from reconciler.config import Settings
from reconciler.state.base import StateBackend
from reconciler.state.local import LocalBackend


def open_backend(settings: Settings) -> StateBackend:
    """The backend the settings name (`local` is the only one so far)."""
    return LocalBackend(settings.state_path())
