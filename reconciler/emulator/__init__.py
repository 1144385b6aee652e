"""A local ROMA Connect FDI dispatch API, for trying `apply` without a cloud account and for tests.

`api` is the API (validation, error codes, authentication, faults, persistence), `server` the
HTTP/1.1 server around it, `cli` the `reconciler emulator` command.
"""

from reconciler.emulator.api import Emulator
from reconciler.emulator.cli import add_arguments, run_from_args
from reconciler.emulator.server import Reply

__all__ = ["Emulator", "Reply", "add_arguments", "run_from_args"]
