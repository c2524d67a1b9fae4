"""The sink contract: how a run's outputs become visible, so that nothing looks final until it is.

A sink
1. **checks** its destination before anything starts, and refuses one it must not write into
   (`check`: raises a UserError, exit 2);
2. **claims** it for one run: a lock that keeps a second run out, and a staging area that only
   this run writes (`claim`, released whatever happens);
3. lets the job write every output into staging (`staging_location`), where nothing mistakes
   it for a result;
4. **finalizes** in one step that is safe to run twice and to resume after a failure at any
   point (Beam and Dataflow may retry it): makes the staged outputs visible, replaces a previous
   run's only when this run is within its error budget, marks success last, cleans up
   (`finalize`);
5. touches nothing at its destination that it did not write.

`FileFamilySink` is the sink for files: families of sharded files renamed into an output dir
(the mechanics and their guarantees are in `transforms.output_dir`). A table sink keeps the
same contract with a staging table that the job loads and one atomic replace at finalize (a
table copy with WRITE_TRUNCATE, or a partition replace for a date-partitioned table); the
manifest and `_SUCCESS` still go under --output, written last.
"""
from __future__ import annotations

import abc
from typing import Callable

from transforms import output_dir, output_lock

__all__ = ["Sink", "FileFamilySink"]


class Sink(abc.ABC):
    """Where a run's outputs go; picklable, so that the finalize step carries it to a worker."""

    location: str

    @abc.abstractmethod
    def check(self, overwrite: bool, inputs: list[str]) -> None:
        """Refuse a destination this run must not write into; changes nothing."""

    @abc.abstractmethod
    def claim(self, run_id: str):
        """Lock the destination for this run and create its staging area; returns an object
        whose `release()` gives it up (idempotent)."""

    @abc.abstractmethod
    def staging_location(self, run_id: str) -> str:
        """Where the job writes this run's outputs before they are final."""

    @abc.abstractmethod
    def finalize(self, run_id: str, staged: dict[str, str], within_budget: bool,
                 overwrite: bool, manifest_for: Callable[[str, list[str]], dict]) -> str:
        """Make the staged outputs ({staged path: final name}) visible; returns where this
        run's outputs are. Safe to call again with the same arguments."""

    @abc.abstractmethod
    def outputs_of(self, run_id: str) -> str | None:
        """Where a finished run's outputs are (None if it never finalized)."""


class FileFamilySink(Sink):
    """Sharded files renamed from a staging dir into an output dir (local or gs://)."""

    def __init__(self, location: str):
        self.location = output_dir.normalize_output(location)

    def check(self, overwrite: bool, inputs: list[str]) -> None:
        output_dir.check_output(self.location, overwrite, inputs)

    def claim(self, run_id: str):
        return output_lock.claim_output(self.location, run_id)

    def staging_location(self, run_id: str) -> str:
        return f"{self.location}/{output_lock.staging_name(run_id)}"

    def finalize(self, run_id: str, staged: dict[str, str], within_budget: bool,
                 overwrite: bool, manifest_for: Callable[[str, list[str]], dict]) -> str:
        return output_dir.commit(self.location, self.staging_location(run_id), run_id, staged,
                                 within_budget, overwrite, manifest_for)

    def outputs_of(self, run_id: str) -> str | None:
        return output_dir.run_outputs_dir(self.location, run_id)
