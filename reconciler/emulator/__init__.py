"""A local ROMA Connect FDI dispatch API, for trying `apply` without a cloud account and for tests.

`api` is the API (validation, error codes, authentication, faults, persistence), `server` the
HTTP/1.1 server around it, `cli` the `reconciler emulator` command. The names below are
imported on first use: every command registers the emulator's options, and only `emulator` and
`--emulator` need the emulator itself (about 0.2 s of imports).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {"Emulator": "api", "Reply": "server", "add_arguments": "cli",
            "run_from_args": "cli"}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
