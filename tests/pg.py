"""A throwaway PostgreSQL server for tests and benchmarks.

`start_server` runs `initdb` into a new temporary directory and starts the server with `pg_ctl`,
listening on 127.0.0.1 at a free port and on a unix socket in that directory, with trust
authentication; `PgServer.stop` ends it and deletes the directory. Run as root, the server
binaries run as the `postgres` user (the server refuses to run as root).

As a pytest plugin (declared in tests/conftest.py):

- `pg_server` (session): the server; the tests using it are skipped, saying why, only when no
  PostgreSQL server binaries are installed at all;
- `pg_dsn`: a fresh, empty database on it for one test;
- `pg_workspace`: a workspace name no other test uses, for tests that share a database.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

SUPERUSER = "postgres"
SERVER_USER = "postgres"
"""The OS user the server runs as when the caller is root."""


def find_bindir() -> Path | None:
    """Where `initdb`, `pg_ctl` and `postgres` are: `pg_config --bindir`, then Debian's
    versioned directories (newest first), then PATH; None if there is no server at all."""
    candidates: list[Path] = []
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        found = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True,
                               timeout=10, check=False)
        if found.returncode == 0 and found.stdout.strip():
            candidates.append(Path(found.stdout.strip()))
    debian = Path("/usr/lib/postgresql")
    if debian.is_dir():
        versions = [p for p in debian.iterdir() if p.name.replace(".", "").isdigit()]
        candidates += [p / "bin" for p in sorted(versions, key=lambda p: float(p.name),
                                                  reverse=True)]
    if (initdb := shutil.which("initdb")) is not None:
        candidates.append(Path(initdb).parent)
    for directory in candidates:
        if all((directory / name).is_file() for name in ("initdb", "pg_ctl", "postgres")):
            return directory
    return None


def free_port() -> int:
    # The port may be taken again before the server binds it; unlikely enough on a test host.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass(frozen=True, slots=True)
class PgServer:
    """A running throwaway server: `dsn()` connects over TCP on loopback as the superuser."""

    bindir: Path
    base: Path
    port: int
    as_root: bool

    @property
    def datadir(self) -> Path:
        return self.base / "data"

    @property
    def socket_dir(self) -> Path:
        return self.base

    def dsn(self, dbname: str = "postgres") -> str:
        return f"host=127.0.0.1 port={self.port} user={SUPERUSER} dbname={dbname}"

    def run(self, *command: str) -> subprocess.CompletedProcess[str]:
        """Run a server binary (as the server's user when we are root); raise with its output
        if it fails."""
        argv = [str(self.bindir / command[0]), *command[1:]]
        if self.as_root:
            argv = ["runuser", "-u", SERVER_USER, "--", *argv]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False,
                              cwd=self.base)
        if done.returncode != 0:
            raise RuntimeError(f"{command[0]} failed ({done.returncode}): "
                               f"{(done.stdout + done.stderr).strip()[-2000:]}")
        return done

    def psql(self, sql: str, dbname: str = "postgres") -> str:
        """Run SQL through psql over the unix socket; the unaligned, tuples-only output."""
        done = self.run("psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h",
                        str(self.socket_dir), "-p", str(self.port), "-U", SUPERUSER, "-d",
                        dbname, "-c", sql)
        return done.stdout.strip()

    def create_database(self, name: str) -> str:
        """A new empty database; its DSN."""
        self.psql(f'CREATE DATABASE "{name}"')
        return self.dsn(name)

    def stop(self) -> None:
        """Stop the server at once (nothing in it is kept) and delete its directory."""
        with contextlib.suppress(RuntimeError, subprocess.SubprocessError):
            self.run("pg_ctl", "-D", str(self.datadir), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.base, ignore_errors=True)


def start_server(bindir: Path, *, durable: bool = False) -> PgServer:
    """Initialise and start a server in a new temporary directory.

    `durable=False` turns fsync off: tests kill clients, never the server, so flushing to disk
    only slows them down. Benchmarks pass `durable=True` to measure the real cost of a commit."""
    as_root = os.geteuid() == 0
    # Directly under the system temp dir, not pytest's: that one is private to root (mode 0700)
    # and the server's user must reach its data and socket; the path is kept short because a
    # unix socket path is limited to about 100 bytes.
    base = Path(tempfile.mkdtemp(prefix="reconciler-pg-"))
    if as_root:
        shutil.chown(base, SERVER_USER, SERVER_USER)
    server = PgServer(bindir, base, free_port(), as_root)
    try:
        server.run("initdb", "-D", str(server.datadir), "-U", SUPERUSER, "--auth=trust",
                   "--encoding=UTF8", "--locale=C", "--no-sync")
        options = [f"-p {server.port}", "-c listen_addresses=127.0.0.1",
                   f"-k {server.socket_dir}", "-c max_connections=200"]
        if not durable:
            options += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
        server.run("pg_ctl", "-D", str(server.datadir), "-l", str(base / "server.log"),
                   "-o", " ".join(options), "-w", "-t", "60", "start")
    except BaseException:
        server.stop()
        raise
    return server


# -- pytest plugin ----------------------------------------------------------------------------

_names = itertools.count()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    bindir = find_bindir()
    if bindir is None:
        pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl, postgres) found via "
                    "pg_config --bindir, /usr/lib/postgresql/*/bin or PATH")
    server = start_server(bindir)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_dsn(pg_server: PgServer) -> str:
    """A fresh empty database for this test."""
    return pg_server.create_database(f"t{os.getpid()}_{next(_names)}")


@pytest.fixture
def pg_workspace() -> str:
    """A workspace name unique in this test run."""
    return f"ws-{uuid.uuid4().hex[:12]}"

