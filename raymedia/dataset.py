"""A data set given by path, as ``raymedia evaluate`` (``offline``) and ``raymedia tune``
see it: its day partitions, its catalog, and the history length it implies.

History length: unless the config or an override sets ``data.history_len``, it comes
from the data (``history_len_from``): the 90th percentile of the users' interaction
counts, between 20 and 200, so a movie log with a median user of 70 ratings is not cut
to the last 50, while attention (quadratic in the length) stays affordable.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import re

import pyarrow.fs as pafs

from raymedia import config as config_mod
from raymedia import storage

log = logging.getLogger(__name__)
AUTO_LEN = (20, 200, 90)       # history_len from the data: lowest, highest, percentile


def event_days(events_uri: str) -> list[dt.date]:
    """The ``dt=YYYY-MM-DD`` partitions under an events root, in order."""
    fs, path = storage.resolve(events_uri)
    days = []
    for info in fs.get_file_info(pafs.FileSelector(path, allow_not_found=True)):
        m = re.fullmatch(r"dt=(\d{4}-\d{2}-\d{2})", info.base_name)
        if info.type == pafs.FileType.Directory and m:
            days.append(dt.date.fromisoformat(m.group(1)))
    if not days:
        raise FileNotFoundError(f"no dt=YYYY-MM-DD partitions under {events_uri}")
    return sorted(days)


def default_catalog(events_uri: str) -> str:
    """``<root>/catalog`` next to ``<root>/events`` (what the generator and importers write)."""
    return storage.join(events_uri.rstrip("/").rsplit("/", 1)[0], "catalog")


def history_len_from(histories) -> int:
    """``AUTO_LEN``'s percentile of the users' interaction counts in the window, clipped."""
    import numpy as np
    lo, hi, q = AUTO_LEN
    counts = histories.select_columns(["n_events"]).to_pandas()["n_events"].to_numpy()
    n = int(np.clip(np.ceil(np.percentile(counts, q)), lo, hi)) if len(counts) else lo
    log.info("history_len %d from the data (p%d of %d users' interaction counts, clipped to %d..%d)",
             n, q, len(counts), lo, hi)
    return n


def history_len_overrides(config: str | None, overrides) -> list[str]:
    """[] when the config file or an override sets ``data.history_len``; else the override
    that keeps ``AUTO_LEN``'s cap of events in the state, for ``history_len_from`` to choose
    from (raymedia evaluate and raymedia tune)."""
    if any(o.split("=", 1)[0].strip() == "data.history_len" for o in overrides):
        return []
    raw = config_mod.load_raw(config) if config else {}
    return [] if "history_len" in (raw.get("data") or {}) else [f"data.history_len={AUTO_LEN[1]}"]


def with_history_len(cfg, n: int):
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, history_len=n))
