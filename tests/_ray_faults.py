"""A fault for the Ray tests: a real BatchMasker whose worker process dies in the middle of a run, once."""

from __future__ import annotations

import os

from templatekit import BatchMasker


class DyingMasker(BatchMasker):
    """Kills its worker process (``os._exit``, as an out-of-memory kill or a lost node would) on the worker's
    `die_on`-th batch, the first time any worker gets there: the marker file, created exclusively, says it
    happened, so the worker Ray starts again (and every other) runs normally."""

    def __init__(self, *args, marker: str, die_on: int = 3, **kwargs):
        super().__init__(*args, **kwargs)
        self.marker, self.die_on, self.calls = marker, die_on, 0

    def __call__(self, batch, indices=None):
        self.calls += 1
        if self.calls == self.die_on:
            try:
                os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                pass  # a worker died already
            else:
                os._exit(1)  # no cleanup, no exception: the process is simply gone
        return super().__call__(batch, indices)
