"""Progress display for long loops (training, export checks, file runs), built on rich.

Drawn on stderr and only when enabled, so piped output and tests stay clean.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class TrainProgress:
    """One bar per epoch with the running loss and throughput; prints validation per epoch.
    The refit's epochs (``selection=refit``) are labelled as ``epoch_label`` says."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.console = Console(stderr=True)
        self._progress: Progress | None = None
        self._task = None
        self._epoch = 0

    def __enter__(self) -> "TrainProgress":
        if self.enabled:
            self._progress = Progress(
                TextColumn("{task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]:.4f}  {task.fields[rate]:.0f} seq/s"),
                TimeElapsedColumn(), console=self.console, transient=False)
            self._progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._progress:
            self._progress.__exit__(*exc)

    def update(self, event: dict[str, Any]) -> None:
        if not self._progress:
            return
        if "valid" in event:
            m = event["valid"]
            self._progress.console.print(
                f"epoch {event['epoch']}: valid HR@10 {m['HR@10']:.4f} NDCG@10 {m['NDCG@10']:.4f}")
            return
        epoch = epoch_label(event)
        if epoch != self._epoch:
            self._epoch = epoch
            self._task = self._progress.add_task("", total=event["steps"], epoch=epoch, loss=0.0, rate=0.0)
        self._progress.update(self._task, completed=event["step"], loss=event["loss"], rate=event["seq_per_s"])


def epoch_label(event: dict[str, Any]) -> str:
    """``epoch 3``, or ``refit epoch 3/19`` for the refit's epochs (``selection=refit``)."""
    if event.get("phase") == "refit":
        return f"refit epoch {event['epoch']}/{event['epochs']}"
    return f"epoch {event['epoch']}"


def console(stderr: bool = False) -> Console:
    """A rich Console; wide when output is not a terminal, so tables in logs don't wrap."""
    c = Console(stderr=stderr)
    return c if c.is_terminal else Console(stderr=stderr, width=160)
