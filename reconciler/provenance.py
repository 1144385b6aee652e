"""Who is changing the state, from which commit and CI job: read from the environment and git.

CI systems say who triggered a run and which commit it builds; outside CI we ask git (the
committer identity and HEAD) and fall back to the OS user.
"""

from __future__ import annotations

import socket
import subprocess
import time
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


GIT_TIMEOUT = 5.0
"""Seconds each git question may take (a stuck hook, a network file system): then it counts
as unanswered."""


def _git_answers(cwd: Path, *queries: tuple[str, ...]) -> list[str | None]:
    """git's output for each query (None where git failed, said nothing or took longer than
    GIT_TIMEOUT), the processes run side by side: starting git takes a few milliseconds, which
    every apply paid three times."""
    running: list[subprocess.Popen[str] | None] = []
    for query in queries:
        try:
            # Not UTF-8 (a legacy user.name) is shown with replacement characters, not a crash.
            running.append(subprocess.Popen(["git", *query], cwd=cwd, stdout=subprocess.PIPE,
                                            stderr=subprocess.DEVNULL, text=True,
                                            encoding="utf-8", errors="replace"))
        except OSError:
            running.append(None)
    deadline = time.monotonic() + GIT_TIMEOUT
    return [_answer(process, deadline) for process in running]


def _answer(process: subprocess.Popen[str] | None, deadline: float) -> str | None:
    if process is None:
        return None
    try:
        output, _ = process.communicate(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        # Killed and reaped without reading on: a child of git's (a wrapper, a hook) may hold
        # the pipe open for ever.
        process.kill()
        if process.stdout is not None:
            process.stdout.close()
        process.wait()
        return None
    output = output.strip()
    return output if process.returncode == 0 and output else None


def _ci_actor(environ: Mapping[str, str]) -> str | None:
    if environ.get("GITHUB_ACTIONS") == "true" and environ.get("GITHUB_ACTOR"):
        return f"{environ['GITHUB_ACTOR']} (GitHub Actions)"
    if environ.get("GITLAB_CI") == "true" and environ.get("GITLAB_USER_LOGIN"):
        return f"{environ['GITLAB_USER_LOGIN']} (GitLab CI)"
    if environ.get("CI"):
        return f"{current_user()} (CI)"
    return None


def _ci_commit(environ: Mapping[str, str]) -> str | None:
    for variable in ("GITHUB_SHA", "CI_COMMIT_SHA", "GIT_COMMIT"):
        if environ.get(variable):
            return environ[variable]
    return None


def current(operation: str, environ: Mapping[str, str], now: datetime, cwd: Path) -> Provenance:
    """Outside CI, the committer and the commit come from git, asked all at once."""
    actor = _ci_actor(environ)
    commit = _ci_commit(environ)
    queries = [] if actor else [("config", "user.name"), ("config", "user.email")]
    queries += [] if commit else [("rev-parse", "HEAD")]
    answers = iter(_git_answers(cwd, *queries))
    if not actor:
        name, email = next(answers), next(answers)
        actor = f"{name} <{email}>" if name and email else name or email or current_user()
    if not commit:
        commit = next(answers)
    return Provenance(
        operation=operation,
        time=utc_iso(now),
        actor=actor,
        commit=commit,
        ci_job=ci_job(environ),
        host=socket.gethostname(),
    )
