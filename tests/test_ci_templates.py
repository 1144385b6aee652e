"""The CI templates in docs/ci/ only run commands the CLI accepts, and keep their guarantees.

Every shell line of a `run:` block (GitHub Actions) or a `script:` list (GitLab CI) that invokes
`reconciler` is cut out of its pipes, redirections and command lists and parsed with the CLI's
own parser, so a renamed flag breaks this test rather than a user's pipeline.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler.cli import build_parser
from reconciler.cli.console import UsageError

CI = Path(__file__).resolve().parent.parent / "docs" / "ci"
GITHUB = CI / "github-actions.yml"
GITLAB = CI / "gitlab-ci.yml"
MARKER = "<!-- reconciler-plan -->"

_PUNCTUATION = "();<>|&"
_PREFIXES = {"if", "then", "else", "elif", "do", "while", "until", "!", "time", "exec"}
_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")
_HEREDOC = re.compile(r"<<-?\s*(['\"]?)([A-Za-z_][A-Za-z0-9_]*)\1")


def load(path: Path) -> dict[Any, Any]:
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(doc, dict), f"{path}: not a mapping"
    return doc


def github_scripts(doc: dict[Any, Any]) -> Iterator[tuple[str, str]]:
    for job_name, job in doc["jobs"].items():
        for index, step in enumerate(job.get("steps", [])):
            if "run" in step:
                yield f"jobs.{job_name}.steps[{index}]", step["run"]


def gitlab_scripts(doc: dict[Any, Any]) -> Iterator[tuple[str, str]]:
    for job_name, job in doc.items():
        if not isinstance(job, dict):
            continue
        for section in ("before_script", "script", "after_script"):
            items = job.get(section, [])
            for index, item in enumerate([items] if isinstance(items, str) else items):
                yield f"{job_name}.{section}[{index}]", item


def logical_lines(script: str) -> Iterator[str]:
    """Lines with `\\` continuations joined and here-document bodies left out."""
    pending = ""
    terminator: str | None = None
    for line in script.splitlines():
        if terminator is not None:
            if line.strip() == terminator:
                terminator = None
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full, pending = pending + line, ""
        heredoc = _HEREDOC.search(full)
        if heredoc:
            terminator = heredoc.group(2)
        yield full


def commands(line: str) -> Iterator[list[str]]:
    """The simple commands of a shell line: split at pipes, redirections, `;`, `&&`, `||`,
    and `$(`/`)`, with keywords (`if`, `then` ...) and variable assignments dropped."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=_PUNCTUATION)
    lexer.whitespace_split = True
    tokens = list(lexer)
    current: list[str] = []
    redirect_target = False
    for index, token in enumerate(tokens):
        if all(char in _PUNCTUATION for char in token):
            if current:
                yield current
            current = []
            redirect_target = token.startswith((">", "<"))
            continue
        if redirect_target:  # the file after `>`: not part of the next command
            redirect_target = False
            continue
        following = tokens[index + 1] if index + 1 < len(tokens) else ""
        if token.isdigit() and following.startswith((">", "<")):
            continue  # the fd of `2>file`
        if not current and (token in _PREFIXES or _ASSIGNMENT.match(token)):
            continue
        current.append(token)
    if current:
        yield current


def reconciler_args(words: list[str]) -> list[str] | None:
    if words and words[0] == "reconciler":
        return words[1:]
    if words[:3] == ["python", "-m", "reconciler"]:
        return words[3:]
    return None


def invocations(path: Path) -> list[tuple[str, list[str]]]:
    doc = load(path)
    scripts = github_scripts(doc) if path == GITHUB else gitlab_scripts(doc)
    found = []
    for where, script in scripts:
        for line in logical_lines(script):
            for words in commands(line):
                args = reconciler_args(words)
                if args is not None:
                    found.append((f"{path.name}:{where}", args))
    return found


def state_diff_supported() -> bool:
    try:
        build_parser().parse_args(["state", "diff"])
    except UsageError as error:
        if "invalid choice" in str(error):
            return False
        raise
    return True


def is_state_diff(args: list[str]) -> bool:
    return any(a == "state" and b == "diff" for a, b in pairwise(args))


def cases() -> list[Any]:
    supported = state_diff_supported()
    params = []
    for path in (GITHUB, GITLAB):
        for where, args in invocations(path):
            marks = []
            if is_state_diff(args) and not supported:
                marks.append(pytest.mark.xfail(
                    raises=UsageError, strict=True,
                    reason="`reconciler state diff` is not registered in the CLI yet"))
            params.append(pytest.param(args, id=f"{where}: reconciler {' '.join(args)}",
                                       marks=marks))
    return params


@pytest.mark.parametrize("args", cases())
def test_every_reconciler_line_parses(args: list[str]) -> None:
    build_parser().parse_args(args)


@pytest.mark.parametrize("path", [GITHUB, GITLAB], ids=["github", "gitlab"])
def test_templates_run_the_whole_workflow(path: Path) -> None:
    used = set()
    for _, args in invocations(path):
        words = [arg for arg in args if not arg.startswith("-")]
        used.add(tuple(words[:2]) if words[0] == "state" else (words[0],))
    assert {("validate",), ("plan",), ("show",), ("apply",), ("state", "history"),
            ("state", "diff")} <= used
    plans = [args for _, args in invocations(path) if "plan" in args]
    assert all("--detailed-exitcode" in args for args in plans)
    applies = [args for _, args in invocations(path) if "apply" in args]
    assert all("--auto-approve" in args for args in applies)


def test_extraction_handles_shell_syntax() -> None:
    line = ("before=$(reconciler -q state history | tail -n 1 | cut -f 1); "
            "code=0; reconciler plan --out p.json 2> err.txt > plan.md || code=$? && "
            "if reconciler validate; then echo ok; fi")
    found = [reconciler_args(words) for words in commands(line)]
    assert [args for args in found if args is not None] == [
        ["-q", "state", "history"], ["plan", "--out", "p.json"], ["validate"]]
    script = "reconciler apply \\\n  --auto-approve\ncat <<'EOF'\nreconciler nonsense\nEOF\n"
    assert list(logical_lines(script)) == ["reconciler apply    --auto-approve", "cat <<'EOF'"]


def test_github_workflow_guarantees() -> None:
    doc = load(GITHUB)
    triggers = doc["on"] if "on" in doc else doc[True]  # YAML 1.1 reads a bare `on` as true
    assert "pull_request" in triggers
    assert triggers["push"]["branches"] == ["main"]
    apply = doc["jobs"]["apply"]
    assert apply["concurrency"] == {"group": "reconciler-apply", "cancel-in-progress": False}
    assert apply["env"]["RECONCILER_TOKEN"] == "${{ secrets.RECONCILER_TOKEN }}"
    assert "RECONCILER_TOKEN" not in doc["jobs"]["plan"].get("env", {})
    plan_steps = doc["jobs"]["plan"]["steps"]
    comment = next(s for s in plan_steps if s.get("uses", "").startswith("actions/github-script"))
    assert MARKER in comment["with"]["script"]
    plan_run = next(s["run"] for s in plan_steps if s.get("id") == "plan")
    assert re.search(r"^\s*2\)", plan_run, re.MULTILINE), "exit code 2 must count as success"
    assert doc["jobs"]["plan"]["permissions"]["pull-requests"] == "write"


def test_gitlab_pipeline_guarantees() -> None:
    doc = load(GITLAB)
    assert doc["apply"]["resource_group"] == "reconciler-apply"
    assert doc["apply"]["rules"] == [{"if": "$CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH"}]
    for job in ("validate", "plan"):
        assert doc[job]["rules"] == [{"if": '$CI_PIPELINE_SOURCE == "merge_request_event"'}]
    script = "\n".join(doc["plan"]["script"])
    assert MARKER in script
    assert "-ne 2" in script, "exit code 2 must count as success"
    assert set(doc["plan"]["artifacts"]["paths"]) == {"plan.json", "plan.md"}


@pytest.mark.parametrize("path", [GITHUB, GITLAB], ids=["github", "gitlab"])
def test_no_secret_values_in_templates(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    for line in text.splitlines():
        # a value is only ever taken from the CI system's secret store
        if re.search(r"(TOKEN|DSN)\s*:\s*\S", line) and not line.lstrip().startswith("#"):
            assert "${{ secrets." in line, line
