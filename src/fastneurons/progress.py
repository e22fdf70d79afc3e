"""Progress bars for the long loops (record's merge, analyze), or none when a command runs with progress off.

A loop takes ``progress``, a wrapper ``(items, desc) -> iterable`` or None, so the store and the analyses
show progress without knowing about tqdm or the command's flags.
"""
from __future__ import annotations

import contextlib


def bars(enabled: bool, unit: str = "it"):
    """A wrapper that shows a tqdm bar over the items it is given, or None when not ``enabled``."""
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return lambda items, desc: tqdm(items, desc=desc, unit=unit, leave=False)


def counting_bar(enabled: bool, *, total: int, desc: str, unit: str):
    """A bar to ``update(n)`` as work is done (rate and ETA from the first update), or None when not ``enabled``;
    a context manager either way."""
    if not enabled:
        return contextlib.nullcontext(None)
    from tqdm.auto import tqdm

    return tqdm(total=total, unit=unit, unit_scale=True, desc=desc, smoothing=0.1)


def each(progress, items, desc: str):
    """``items``, through ``progress`` when there is one."""
    return items if progress is None else progress(items, desc)
