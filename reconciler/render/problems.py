"""Validation results as text, JSON, GitHub workflow annotations or a SARIF 2.1.0 log."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from reconciler import __version__
from reconciler.model import Problem

RULE_ID = "reconciler/invalid-schedule"
SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"


def text(problems: Sequence[Problem]) -> str:
    return "".join(f"{problem}\n" for problem in problems)


def summary(files: int, schedules: int, problems: int) -> str:
    noun = "file" if files == 1 else "files"
    if problems:
        counted = "problem" if problems == 1 else "problems"
        return f"{problems} {counted} in {files} {noun}."
    return f"{files} {noun}, {schedules} schedules: valid."


def as_json(problems: Sequence[Problem], files: int, schedules: int) -> str:
    document = {
        "format_version": 1,
        "valid": not problems,
        "files": files,
        "schedules": schedules,
        "problems": [
            {"file": p.file, "line": p.line, "col": p.col, "message": p.message}
            for p in problems
        ],
    }
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def _escape_data(value: str) -> str:
    return value.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(value: str) -> str:
    return _escape_data(value).replace(":", "%3A").replace(",", "%2C")


def github(problems: Sequence[Problem]) -> str:
    """GitHub Actions workflow commands: each problem becomes an annotation on its line."""
    lines = []
    for p in problems:
        props = [f"file={_escape_property(p.file)}"]
        if p.line > 0:
            props += [f"line={p.line}", f"col={p.col}"]
        props.append("title=reconciler validate")
        lines.append(f"::error {','.join(props)}::{_escape_data(p.message)}\n")
    return "".join(lines)


def sarif(problems: Sequence[Problem]) -> str:
    """A SARIF 2.1.0 log that GitHub code scanning accepts (upload-sarif)."""
    results: list[dict[str, Any]] = []
    for p in problems:
        physical: dict[str, Any] = {
            "artifactLocation": {"uri": p.file, "uriBaseId": "%SRCROOT%"},
        }
        if p.line > 0:
            physical["region"] = {"startLine": p.line, "startColumn": max(p.col, 1)}
        results.append({
            "ruleId": RULE_ID,
            "ruleIndex": 0,
            "level": "error",
            "message": {"text": p.message},
            "locations": [{"physicalLocation": physical}],
        })
    log = {
        "$schema": SARIF_SCHEMA,
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {
                "name": "reconciler",
                "version": __version__,
                "rules": [{
                    "id": RULE_ID,
                    "name": "InvalidSchedule",
                    "shortDescription": {"text": "Desired schedule file is invalid"},
                    "fullDescription": {"text": "A desired schedules file fails the JSON Schema "
                                        "or a semantic rule (Quartz cron, time zone, range, "
                                        "uniqueness)."},
                    "defaultConfiguration": {"level": "error"},
                    "help": {"text": "Run `reconciler validate` locally for the same message."},
                }],
            }},
            "results": results,
        }],
    }
    return json.dumps(log, indent=2, ensure_ascii=False) + "\n"
