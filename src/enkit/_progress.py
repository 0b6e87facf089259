"""Progress bars of long runs (``progress=True``), drawn by tqdm.

``progress_bar(total, desc=..., enabled=...)`` returns a tqdm bar on
standard error, or a silent stand-in with the same ``update``/``close``
methods when ``enabled`` is False or standard error is not a terminal (a
log file or a CI job gets no bar characters). A run's results never
depend on whether a bar is shown.
"""

from __future__ import annotations

import sys

__all__ = ["progress_bar"]


class _Silent:
    """What ``progress_bar`` returns when no bar is shown."""

    disable = True

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, s: str) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def progress_bar(total: int, *, desc: str, unit: str = "cycle", enabled: bool = True,
                 initial: int = 0, file=None):
    """A bar counting ``total`` units (``update(n)``; ``close()`` at the end).

    enabled: False for none; with True the bar is drawn only when ``file``
    (default ``sys.stderr``) is a terminal. initial: units already done (a
    resumed run).
    """
    file = sys.stderr if file is None else file
    isatty = getattr(file, "isatty", None)
    if not enabled or not (callable(isatty) and isatty()):
        return _Silent()
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, initial=initial, file=file,
                dynamic_ncols=True, mininterval=0.2)
