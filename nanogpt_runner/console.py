"""What a run shows a person: a rich progress bar on a terminal, plain lines elsewhere, the same lines
in train.log, and a one-screen summary at the end."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table


class RunConsole:
    """Rank 0's console. ``line`` is for things worth keeping (eval, warnings); ``progress`` is the
    live bar on a terminal and a log line per call elsewhere."""

    def __init__(self, log_file: TextIO | None, total_steps: int, live: bool = True):
        """``log_file``: train.log opened for appending (the caller opens it without following links); closed here."""
        self.console = Console(highlight=False)
        self.log_file = log_file
        self.total_steps = total_steps
        self.bar: Progress | None = None
        if live and self.console.is_terminal:
            self.bar = Progress(
                TextColumn("[bold]step"), MofNCompleteColumn(), BarColumn(),
                TextColumn("{task.fields[stats]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                console=self.console, transient=False,
            )
            self._task = self.bar.add_task("train", total=total_steps, stats="")

    def __enter__(self) -> RunConsole:
        if self.bar:
            self.bar.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.bar:
            self.bar.stop()
        if self.log_file:
            self.log_file.close()
            self.log_file = None

    def line(self, text: str) -> None:
        self._print(text)
        self._log(text)

    def progress(self, step: int, completed: int, stats: str) -> None:
        text = f"step {step}/{self.total_steps} | {stats}"
        if self.bar:
            self.bar.update(self._task, completed=completed, stats=stats)
        else:
            self._print(text)
        self._log(text)

    def _print(self, text: str) -> None:
        """Through rich on a terminal (beside the live bar); elsewhere (a pipe, a log file) as it is, one line
        unwrapped, without rich's rendering, which cost a small GPU model's loop 2% at every metrics line."""
        if self.console.is_terminal:
            self.console.print(text, markup=False)
        elif not self.console.quiet:
            print(text, file=self.console.file, flush=True)

    def summary(self, title: str, rows: dict[str, str]) -> None:
        table = Table(title=title, show_header=False, title_justify="left")
        for key, value in rows.items():
            table.add_row(key, value)
        self.console.print(table)
        self._log(title + "\n" + "\n".join(f"  {k}: {v}" for k, v in rows.items()))

    def _log(self, text: str) -> None:
        if self.log_file:
            self.log_file.write(f"{time.strftime('%H:%M:%S')} {text}\n")
            self.log_file.flush()


def error(message: str) -> None:
    """A user-facing error on stderr: one clear message, no traceback."""
    print(f"error: {message}", file=sys.stderr)
