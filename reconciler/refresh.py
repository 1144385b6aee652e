"""Reading the live dispatches of many tasks at once, for `plan --refresh` and `import --all`.

Each task is one GET; at most `parallelism` are in flight at once, on one event loop. A task
the API cannot read (404 FDI.3180: not in the project, auth errors, retries exhausted) becomes a
located problem for that key; the others are still read, and the planner falls back to the
recorded state for it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass

from reconciler.apply import DispatchApi
from reconciler.client import ApiError
from reconciler.concurrency import bounded_map
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
    results = asyncio.run(_read_all(api, ordered, parallelism)) if ordered else []
    live: dict[DispatchKey, RemoteDispatch | None] = {}
    failures: list[ReadFailure] = []
    for key, result in zip(ordered, results, strict=True):
        if isinstance(result, ReadFailure):
            failures.append(result)
        else:
            live[key] = result
    return live, failures


async def _read_all(api: DispatchApi, keys: list[DispatchKey],
                    parallelism: int) -> list[RemoteDispatch | ReadFailure | None]:
    async def one(key: DispatchKey) -> RemoteDispatch | ReadFailure | None:
        try:
            return await api.show(key)
        except ApiError as exc:
            return ReadFailure(key, str(exc))

    async with api:
        return await bounded_map(one, keys, parallelism)
