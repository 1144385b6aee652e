"""Choosing the state backend the settings name."""

from __future__ import annotations

from reconciler.config import Settings
from reconciler.state.base import StateBackend, StateError
from reconciler.state.local import LocalBackend


def open_backend(settings: Settings) -> StateBackend:
    """The backend the settings name: `local` files, or `postgres`, whose module (and psycopg,
    the optional extra `reconciler[postgres]`) is imported only when it is chosen."""
    if settings.state.backend == "postgres":
        if not settings.state.dsn:
            raise StateError("state.backend postgres needs a DSN: set state.dsn in "
                             "reconciler.yaml or RECONCILER_STATE_DSN")
        # Without psycopg this import raises a StateError saying what to install.
        from reconciler.state.postgres import PostgresBackend  # noqa: PLC0415

        return PostgresBackend(settings.state.dsn, settings.state.workspace)
    return LocalBackend(settings.state_path())
