"""`--batch_size auto`: how many records per model call, chosen by measuring the model."""
from __future__ import annotations

__all__ = ["BatchSizeTuner"]


class BatchSizeTuner:
    """`--batch_size auto`: start at `start` records per call and double the size while the
    model's records/s (median of `calls` full-size calls, the first call at each size not
    counted) improves by at least `gain`; then keep the best size. Out-of-memory caps it."""

    def __init__(self, start: int = 1024, maximum: int = 32768, calls: int = 3,
                 gain: float = 0.10):
        self.size = start
        self.maximum = maximum
        self.settled = False
        self.best: tuple[int, float] | None = None  # (size, records/s)
        self._calls = calls
        self._gain = gain
        self._rates: list[float] = []
        self._skipped = False

    def observe(self, records: int, seconds: float) -> None:
        """One successful model call; partial chunks (bundle ends) do not count."""
        if self.settled or records < self.size or seconds <= 0:
            return
        if not self._skipped:  # a new size's first call pays for new buffer shapes
            self._skipped = True
            return
        self._rates.append(records / seconds)
        if len(self._rates) < self._calls:
            return
        rate = sorted(self._rates)[len(self._rates) // 2]
        self._rates, self._skipped = [], False
        if self.best is None or rate >= self.best[1] * (1 + self._gain):
            self.best = (self.size, rate)
            if self.size * 2 > self.maximum:
                self.settled = True
            else:
                self.size *= 2
        else:
            self.size = self.best[0]
            self.settled = True

    def cap(self, limit: int) -> None:
        """Out of memory at more than `limit` records: never go above it."""
        self.maximum = min(self.maximum, limit)
        if self.size > limit:
            self.size = limit
        if self.best is not None and self.best[0] > limit:
            self.best = None
        self.settled = True

