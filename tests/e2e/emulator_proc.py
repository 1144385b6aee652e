"""The emulator as a separate process, driven through its HTTP control API."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx


class EmulatorProcess:
    def __init__(self, url: str, process: subprocess.Popen[str]) -> None:
        self.url = url
        self.process = process
        self.http = httpx.Client(base_url=url, timeout=10)

    def calls(self) -> dict[str, dict[str, int]]:
        result: dict[str, dict[str, int]] = self.http.get("/_emulator/calls").json()
        return result

    def dispatches(self) -> dict[str, dict[str, Any]]:
        result: dict[str, dict[str, Any]] = self.http.get("/_emulator/dispatches").json()
        return result

    def fault(self, key: str | None, fault: str, times: int = 1) -> None:
        response = self.http.post("/_emulator/faults",
                                  json={"key": key, "fault": fault, "times": times})
        response.raise_for_status()

    def put(self, key: str, dispatch: dict[str, Any]) -> None:
        self.http.post("/_emulator/dispatches",
                       json={"key": key, "dispatch": dispatch}).raise_for_status()

    def delete(self, key: str) -> None:
        self.http.delete(f"/_emulator/dispatches/{key}").raise_for_status()

    def unknown_task(self, key: str) -> None:
        self.http.post("/_emulator/unknown-tasks", json={"key": key}).raise_for_status()

    def iam(self) -> dict[str, int]:
        """Token requests answered by the emulator's IAM: issued and refused."""
        result: dict[str, int] = self.http.get("/_emulator/iam").json()
        return result

    def posts(self) -> dict[str, int]:
        return {key: calls.get("POST", 0) for key, calls in self.calls().items()}


@contextmanager
def emulator(*options: str) -> Iterator[EmulatorProcess]:
    process = subprocess.Popen(
        [sys.executable, "-m", "reconciler", "emulator", "--port", "0", *options],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if "listening on" not in line:
            errors = process.stderr.read() if process.stderr else ""
            raise RuntimeError(f"emulator did not start: {line} {errors}")
        url = line.split("listening on ")[1].split()[0]
        proc = EmulatorProcess(url, process)
        yield proc
        proc.http.close()
    finally:
        process.terminate()
        process.wait(timeout=10)
