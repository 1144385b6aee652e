"""Reading the live dispatches of many tasks at once, for `plan --refresh` and `import --all`.

Each task is one GET; they run concurrently on a bounded pool. A task the API cannot read (404
FDI.3180: not in the project, auth errors, retries exhausted) becomes a located problem for that
key; the others are still read, and the planner falls back to the recorded state for it.
"""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from reconciler.apply import DispatchApi
from reconciler.client import ApiError
from reconciler.model import DispatchKey, RemoteDispatch


@dataclass(frozen=True, slots=True)
class ReadFailure:
    key: DispatchKey
    message: str

    def __str__(self) -> str:
        return f"{self.key}: {self.message}"


def read_live(
    api: DispatchApi, keys: Iterable[DispatchKey], parallelism: int
) -> tuple[dict[DispatchKey, RemoteDispatch | None], list[ReadFailure]]:
    """key → live dispatch (None: the task has none) for every key read; failures apart."""
    ordered = sorted(set(keys))

    def one(key: DispatchKey) -> RemoteDispatch | ReadFailure | None:
        try:
            return api.show(key)
        except ApiError as exc:
            return ReadFailure(key, str(exc))

    if len(ordered) <= 1 or parallelism <= 1:
        results = [one(key) for key in ordered]
    else:
        with ThreadPoolExecutor(max_workers=min(parallelism, len(ordered)),
                                thread_name_prefix="refresh") as pool:
            results = list(pool.map(one, ordered))
    live: dict[DispatchKey, RemoteDispatch | None] = {}
    failures: list[ReadFailure] = []
    for key, result in zip(ordered, results, strict=True):
        if isinstance(result, ReadFailure):
            failures.append(result)
        else:
            live[key] = result
    return live, failures
