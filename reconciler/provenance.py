"""Who is changing the state, from which commit and CI job: read from the environment and git.

CI systems say who triggered a run and which commit it builds; outside CI we ask git (the
committer identity and HEAD) and fall back to the OS user.
"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

from reconciler.state.base import Provenance, current_user


def utc_iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def ci_job(environ: Mapping[str, str]) -> str | None:
    if environ.get("GITHUB_ACTIONS") == "true" and environ.get("GITHUB_RUN_ID"):
        server = environ.get("GITHUB_SERVER_URL", "https://github.com")
        repo = environ.get("GITHUB_REPOSITORY", "")
        return f"{server}/{repo}/actions/runs/{environ['GITHUB_RUN_ID']}"
    if environ.get("GITLAB_CI") == "true":
        return environ.get("CI_JOB_URL") or environ.get("CI_JOB_ID")
    if environ.get("CI"):
        return environ.get("CI_JOB_ID") or environ.get("BUILD_URL") or environ.get("BUILD_ID")
    return None


def _git(cwd: Path, *args: str) -> str | None:
    try:
        result = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    output = result.stdout.strip()
    return output if result.returncode == 0 and output else None


def actor(environ: Mapping[str, str], cwd: Path) -> str:
    if environ.get("GITHUB_ACTIONS") == "true" and environ.get("GITHUB_ACTOR"):
        return f"{environ['GITHUB_ACTOR']} (GitHub Actions)"
    if environ.get("GITLAB_CI") == "true" and environ.get("GITLAB_USER_LOGIN"):
        return f"{environ['GITLAB_USER_LOGIN']} (GitLab CI)"
    if environ.get("CI"):
        return f"{current_user()} (CI)"
    name = _git(cwd, "config", "user.name")
    email = _git(cwd, "config", "user.email")
    if name and email:
        return f"{name} <{email}>"
    return name or email or current_user()


def commit(environ: Mapping[str, str], cwd: Path) -> str | None:
    for variable in ("GITHUB_SHA", "CI_COMMIT_SHA", "GIT_COMMIT"):
        if environ.get(variable):
            return environ[variable]
    return _git(cwd, "rev-parse", "HEAD")


def current(operation: str, environ: Mapping[str, str], now: datetime, cwd: Path) -> Provenance:
    return Provenance(
        operation=operation,
        time=utc_iso(now),
        actor=actor(environ, cwd),
        commit=commit(environ, cwd),
        ci_job=ci_job(environ),
        host=socket.gethostname(),
    )
