"""The ids of every task the load dispatched, so the lab can follow each one to its end after the run.

Users call ``record()``. The master (or the only Locust process) appends to the ledger file at once; a worker
buffers and ships the ids with its next report, through Locust's own channel, so workers on other machines
need no shared disk. The file has one ``<task_id>\\t<flow>`` line per task.
"""

from __future__ import annotations

from pathlib import Path
from typing import IO


class Ledger:
    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self.pending: list[list[str]] = []
        self._fh: IO[str] | None = None

    def record(self, flow: str, *task_ids: str) -> None:
        rows = [[tid, flow] for tid in task_ids if tid]
        if self.path is None:
            self.pending.extend(rows)
        else:
            self.write(rows)

    def write(self, rows: list[list[str]]) -> None:
        if self.path is None or not rows:
            return
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = self.path.open("a", buffering=1)
        self._fh.writelines(f"{tid}\t{flow}\n" for tid, flow in rows)

    def drain(self) -> list[list[str]]:
        rows, self.pending = self.pending, []
        return rows

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def read_ledger(path: Path) -> dict[str, str]:
    """task id -> flow; a missing file is an empty ledger (the load dispatched nothing)."""
    out: dict[str, str] = {}
    if not path.is_file():
        return out
    for line in path.read_text().splitlines():
        tid, _, flow = line.partition("\t")
        if tid:
            out[tid] = flow
    return out
