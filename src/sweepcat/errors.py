"""Errors that reach users: each names the culprit and says what to do."""

from __future__ import annotations

from dataclasses import dataclass


class SweepcatError(Exception):
    """An error with a message for people; the CLI prints it without a traceback."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  -> {self.hint}"


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one place: a file, a manifest row, a column."""

    where: str  # e.g. "artifacts.parquet row 17 column 'file'" or "data/run3.h5"
    what: str  # what is wrong
    fix: str  # what to do about it

    def __str__(self) -> str:
        return f"{self.where}: {self.what} -> {self.fix}"


class ContractError(SweepcatError):
    """A manifest (or input directory) breaks the contract; lists every problem found."""

    max_listed = 20

    def __init__(self, problems: list[Problem], subject: str = "manifest"):
        self.problems = list(problems)
        shown = [f"  - {p}" for p in self.problems[: self.max_listed]]
        more = len(self.problems) - self.max_listed
        if more > 0:
            shown.append(f"  ... and {more} more")
        self.head = f"{subject}: {len(self.problems)} problem(s); nothing was written"
        super().__init__(self.head + "\n" + "\n".join(shown))


class SourceInvalid(SweepcatError):
    """A node's data source is not one sweepcat writes (its parameters, its asset URI): refused, never guessed."""


class DatasetChanged(SweepcatError):
    """A dataset changed between the query that found rows and a read of them (HTTP 409)."""


class CatalogBusy(SweepcatError):
    """Another writer holds the catalog's write lock for longer than this writer would wait."""

    def __init__(self, catalog: str, waited: float):
        super().__init__(f"catalog {catalog} is being written by another process (an ingest, a register, a delete or "
                         f"a write through Tiled holds its write lock); waited {waited:g} s",
                         "run this again when that write has finished, or wait longer with --wait SECONDS")
