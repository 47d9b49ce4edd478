"""Progress of long loops: done/total, rate and time remaining, through absl logging."""

import time

from absl import logging


class Progress:
    """Logs `name: i/total <unit>, rate/s, ETA` after each update.

    Args:
      total: number of updates expected.
      name: what is being done.
      unit: what the rate counts.
    """

    def __init__(self, total: int, name: str, unit: str = "images"):
        self.total, self.name, self.unit = total, name, unit
        self.done = self.count = 0
        self.start = time.time()

    def update(self, count: int = 1) -> None:
        self.done += 1
        self.count += count
        elapsed = max(time.time() - self.start, 1e-9)
        eta = elapsed / self.done * (self.total - self.done)
        logging.info(
            "%s: %d/%d, %.1f %s/s, ETA %.0f s.",
            self.name,
            self.done,
            self.total,
            self.count / elapsed,
            self.unit,
            eta,
        )
