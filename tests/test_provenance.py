from __future__ import annotations

import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from reconciler import provenance

NOW = datetime(2026, 11, 29, 12, 30, 5, tzinfo=UTC)


def test_github_actions(tmp_path: Path) -> None:
    env = {"GITHUB_ACTIONS": "true", "GITHUB_ACTOR": "octocat", "GITHUB_SHA": "f00d" * 10,
           "GITHUB_RUN_ID": "42", "GITHUB_REPOSITORY": "acme/schedules",
           "GITHUB_SERVER_URL": "https://github.example.com", "CI": "true"}
    who = provenance.current("apply", env, NOW, tmp_path)
    assert who.operation == "apply"
    assert who.time == "2026-11-29T12:30:05Z"
    assert who.actor == "octocat (GitHub Actions)"
    assert who.commit == "f00d" * 10
    assert who.ci_job == "https://github.example.com/acme/schedules/actions/runs/42"
    assert who.host


def test_gitlab_ci(tmp_path: Path) -> None:
    env = {"GITLAB_CI": "true", "CI": "true", "GITLAB_USER_LOGIN": "alice",
           "CI_COMMIT_SHA": "abc123", "CI_JOB_URL": "https://gitlab.example.com/a/b/-/jobs/7"}
    who = provenance.current("import", env, NOW, tmp_path)
    assert (who.actor, who.commit, who.ci_job) == (
        "alice (GitLab CI)", "abc123", "https://gitlab.example.com/a/b/-/jobs/7")


def test_generic_ci(tmp_path: Path) -> None:
    env = {"CI": "1", "BUILD_URL": "https://jenkins.example.com/job/3/", "GIT_COMMIT": "c0ffee"}
    who = provenance.current("apply", env, NOW, tmp_path)
    assert who.actor.endswith("(CI)")
    assert who.ci_job == "https://jenkins.example.com/job/3/"
    assert who.commit == "c0ffee"


def test_outside_ci_uses_git(tmp_path: Path) -> None:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True,
                              text=True).stdout.strip()

    git("init", "-q")
    git("config", "user.name", "Mei Lin")
    git("config", "user.email", "mei@example.com")
    (tmp_path / "f").write_text("x")
    git("add", "f")
    git("commit", "-qm", "x")
    who = provenance.current("state rm", {}, NOW, tmp_path)
    assert who.actor == "Mei Lin <mei@example.com>"
    assert who.commit == git("rev-parse", "HEAD")
    assert who.ci_job is None


def test_outside_git_falls_back_to_the_os_user(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(tmp_path / "none"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    monkeypatch.setattr(provenance, "current_user", lambda: "builder")
    who = provenance.current("apply", {}, NOW, tmp_path)
    assert who.actor == "builder"
    assert who.commit is None


def test_ci_without_a_commit_variable_asks_git_for_head_only(tmp_path: Path) -> None:
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run(["git", "-c", "user.name=x", "-c", "user.email=x@example.com", "commit", "-q",
                    "--allow-empty", "-m", "x"], cwd=tmp_path, check=True)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, check=True,
                          capture_output=True, text=True).stdout.strip()
    who = provenance.current("apply", {"CI": "true"}, NOW, tmp_path)
    assert who.actor.endswith("(CI)")
    assert who.commit == head


def test_without_git_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no git on it
    monkeypatch.setattr(provenance, "current_user", lambda: "builder")
    who = provenance.current("apply", {}, NOW, tmp_path)
    assert (who.actor, who.commit) == ("builder", None)


def _fake_git(directory: Path, script: str) -> None:
    git = directory / "git"
    git.write_text("#!/bin/sh\n" + script)
    git.chmod(0o755)


def test_a_git_that_hangs_is_given_up_on_time(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    # `rev-parse` never answers, and a child of it holds the pipe open after git is killed.
    _fake_git(tmp_path, 'case "$1" in\n'
                        '  config) echo "$2" ;;\n'
                        '  rev-parse) sleep 5 & wait ;;\n'
                        'esac\n')
    monkeypatch.setenv("PATH", f"{tmp_path}:/bin:/usr/bin")
    monkeypatch.setattr(provenance, "GIT_TIMEOUT", 0.3)
    started = time.monotonic()
    who = provenance.current("apply", {}, NOW, tmp_path)
    assert time.monotonic() - started < 3
    assert (who.actor, who.commit) == ("user.name <user.email>", None)


def test_a_name_that_is_not_utf8_does_not_crash(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_git(tmp_path, 'case "$2" in\n'
                        "  user.name) printf 'M\\377i\\n' ;;\n"
                        "  user.email) echo mei@example.com ;;\n"
                        "  HEAD) echo c0ffee ;;\n"
                        "esac\n")
    monkeypatch.setenv("PATH", f"{tmp_path}:/bin:/usr/bin")
    who = provenance.current("apply", {}, NOW, tmp_path)
    assert (who.actor, who.commit) == ("M\ufffdi <mei@example.com>", "c0ffee")
