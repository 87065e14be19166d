"""Importers of public interaction formats into the events contract, partitioned by day.

- ``movielens``: ``ratings.dat`` (``user::item::rating::ts``), ``u.data`` (tab-separated) or
  ``ratings.csv`` (with a header); real timestamps; a rating becomes the event of the
  matching engagement (5 like, 4 complete, 3 play, lower click). The item file beside it
  (``movies.dat``, ``u.item``, or ``movies.csv`` with ``tags.csv``) gives the catalog its
  content: title, category (the first genre) and tags (every genre, then users' tags).
- ``sasrec``: ``user item`` per line, chronological per user, no timestamps: events get
  increasing timestamps in file order, one second apart, from ``start``.
- ``mind`` (Microsoft News Dataset): a folder with ``behaviors.tsv`` and ``news.tsv``. Every
  shown item is an ``impression`` at the impression's time and every clicked one also a
  ``click`` then. The click history a MIND row carries has no times: each user's history
  (from their first row) becomes ``click`` events on the day before the log's first day,
  in its order, one second apart. ``news.tsv`` gives title, category, subcategory,
  abstract (``description``) and the entities' labels (``tags``).

A catalog is written alongside (every item, published at its first event, category unknown
unless an item file says it), so the imported data runs through the pipeline as it is.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from raymedia import schema, storage

FORMATS = ("movielens", "sasrec", "mind")


@dataclass(frozen=True)
class ImportSummary:
    events_uri: str
    catalog_uri: str
    users: int
    items: int
    events: int
    first_day: str
    last_day: str

    @property
    def next_day(self) -> str:
        """The day a run that reads all of the import produces."""
        return (dt.date.fromisoformat(self.last_day) + dt.timedelta(days=1)).isoformat()


def _csv(data: bytes, delimiter: str, names: list[str], skip: int = 0) -> pa.Table:
    return pacsv.read_csv(
        pa.BufferReader(data),
        read_options=pacsv.ReadOptions(column_names=names, skip_rows=skip),
        parse_options=pacsv.ParseOptions(delimiter=delimiter))


def _layout(first: bytes, path: str) -> str:
    """Which MovieLens ratings layout, from the first line: 'dat' (``::``), 'tab' or 'csv'."""
    for sep, layout in ((b"::", "dat"), (b"\t", "tab"), (b",", "csv")):
        if sep in first:
            return layout
    raise ValueError(f"{path}: not a MovieLens ratings file (expected '::', tab or comma separated)")


def read_movielens(path: str) -> pa.Table:
    """MovieLens ratings in any of its three layouts -> events (with ``dt``)."""
    data = storage.read_bytes(path)
    first = data[:data.find(b"\n")] if b"\n" in data else data
    layout = _layout(first, path)
    if layout == "dat":     # ':' splits '::' into an empty field between the values
        raw = _csv(data, ":", ["user_id", "_a", "item_id", "_b", "rating", "_c", "ts"])
    elif layout == "tab":
        raw = _csv(data, "\t", ["user_id", "item_id", "rating", "ts"])
    else:
        raw = _csv(data, ",", ["user_id", "item_id", "rating", "ts"],
                   skip=0 if first[:1].isdigit() else 1)
    rating = np.floor(raw["rating"].to_numpy()).astype(int)
    event = np.where(rating >= 5, "like", np.where(rating == 4, "complete",
                                                   np.where(rating == 3, "play", "click")))
    ts = pc.multiply(raw["ts"].cast(pa.int64()), 1_000_000).cast(schema.TS_TYPE)
    return _events(raw["user_id"], raw["item_id"], pa.array(event), ts)


def read_sasrec(path: str, start: dt.datetime) -> pa.Table:
    """SASRec text (``user item`` per line, chronological per user) -> events (with ``dt``)."""
    raw = _csv(storage.read_bytes(path), " ", ["user_id", "item_id"])
    base = int(start.timestamp() * 1_000_000)
    ts = pa.array(base + np.arange(raw.num_rows, dtype=np.int64) * 1_000_000, pa.int64())
    return _events(raw["user_id"], raw["item_id"], pa.array(["play"] * raw.num_rows),
                   ts.cast(schema.TS_TYPE))


def _events(user, item, event, ts) -> pa.Table:
    t = pa.table({"user_id": user, "item_id": item, "event": event, "ts": ts,
                  "dwell_s": pa.nulls(len(ts), pa.float32())})
    t = schema.conform(t, schema.EVENTS, "import")
    return t.append_column("dt", pc.strftime(t["ts"], format="%Y-%m-%d"))


def catalog_of(events: pa.Table, content: pa.Table | None = None) -> pa.Table:
    """Every item of the events (and of ``content``), published at its first event.

    ``content`` (``item_id`` plus catalog columns: title, category, content columns) fills
    in what an item file says; items it does not name keep their id as title and category
    unknown, and its items without events are listed unpublished-dated (always shown)."""
    first = events.group_by("item_id").aggregate([("ts", "min")])
    ids = first["item_id"] if content is None else pc.unique(pa.chunked_array(
        [first["item_id"], content["item_id"].cast(first["item_id"].type)]).combine_chunks())
    out = pa.table({"item_id": ids}).join(first, "item_id").sort_by("item_id")
    n = out.num_rows
    catalog = pa.table({"item_id": out["item_id"],
                        "title": pc.cast(out["item_id"], pa.string()),
                        "category": pa.array(["unknown"] * n),
                        "published_at": out["ts_min"],
                        "available": pa.array([True] * n)})
    if content is None:
        return catalog
    at = pc.index_in(catalog["item_id"], value_set=content["item_id"].cast(ids.type))
    for name in content.column_names[1:]:
        col = pc.take(content[name], at)         # null where the item file does not name the item
        if name in catalog.column_names:
            catalog = catalog.set_column(catalog.schema.get_field_index(name), name,
                                         pc.coalesce(col, catalog[name]))
        else:
            catalog = catalog.append_column(name, col)
    return schema.conform_catalog(catalog, "import")


def _genre_content(ids: list, titles: list[str], genres: list[list[str]],
                   user_tags: dict | None = None, max_tags: int = 20) -> pa.Table:
    """Catalog content of films. The category is the film's most specific genre (the one
    fewest films have; MovieLens lists genres alphabetically, so the first would make half
    the catalog 'Action' or 'Adventure'); tags are every genre, then users' tags (most used
    first), lower case, each once."""
    count: dict[str, int] = {}
    for g in genres:
        for x in g:
            count[x] = count.get(x, 0) + 1
    tags = []
    for i, g in zip(ids, genres):
        t = [x.lower() for x in g] + [x for x in (user_tags or {}).get(i, [])]
        tags.append(list(dict.fromkeys(t))[:max_tags])
    return pa.table({"item_id": pa.array(ids, pa.int64()), "title": pa.array(titles, pa.string()),
                     "category": pa.array([min(g, key=lambda x: (count[x], x)) if g else "unknown"
                                           for g in genres], pa.string()),
                     "tags": pa.array(tags, pa.list_(pa.string()))})


# u.genre of MovieLens 100K: the order of u.item's 19 flags
ML100K_GENRES = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
                 "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
                 "Romance", "Sci-Fi", "Thriller", "War", "Western")
ITEM_FILES = {"dat": ("movies.dat",), "tab": ("u.item",), "csv": ("movies.csv", "tags.csv")}


def _text(data: bytes) -> str:
    """MovieLens 100K and 1M are Latin-1; the newer sets UTF-8."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def read_movielens_items(ratings_path: str) -> pa.Table | None:
    """The content of the item file beside a ratings file (None when there is none)."""
    fs, path = storage.resolve(ratings_path)
    with fs.open_input_stream(path) as f:
        head = f.read(1 << 16)
    layout = _layout(head.split(b"\n", 1)[0], ratings_path)
    folder = ratings_path.rsplit("/", 1)[0] if "/" in ratings_path else "."
    names = ITEM_FILES[layout]
    fs, _ = storage.resolve(ratings_path)
    if not fs.get_file_info(storage.resolve(storage.join(folder, names[0]))[1]).is_file:
        return None
    data = storage.read_bytes(storage.join(folder, names[0]))
    if layout == "tab":             # id|title|release|video release|url|19 genre flags
        rows = [r.split("|") for r in _text(data).splitlines() if r.strip()]
        genres = [[g for g, f in zip(ML100K_GENRES, r[5:24]) if f == "1" and g != "unknown"] for r in rows]
        return _genre_content([int(r[0]) for r in rows], [r[1] for r in rows], genres)
    if layout == "dat":             # id::title::Genre|Genre
        rows = [r.split("::") for r in _text(data).splitlines() if r.strip()]
        return _genre_content([int(r[0]) for r in rows], [r[1] for r in rows],
                              [[g for g in r[2].split("|") if g] for r in rows])
    movies = pacsv.read_csv(pa.BufferReader(data))
    genres = [[g for g in s.split("|") if g and g != "(no genres listed)"]
              for s in movies["genres"].to_pylist()]
    user_tags: dict = {}
    tags_path = storage.join(folder, names[1])
    if fs.get_file_info(storage.resolve(tags_path)[1]).is_file:
        tags = pacsv.read_csv(pa.BufferReader(storage.read_bytes(tags_path)),
                              convert_options=pacsv.ConvertOptions(column_types={"tag": pa.string()}))
        tags = tags.filter(pc.is_valid(tags["tag"]))
        tags = tags.set_column(2, "tag", pc.utf8_lower(pc.utf8_trim_whitespace(tags["tag"])))
        counts = tags.group_by(["movieId", "tag"]).aggregate([("userId", "count")])
        counts = counts.sort_by([("movieId", "ascending"), ("userId_count", "descending"),
                                 ("tag", "ascending")])
        for m, tag in zip(counts["movieId"].to_pylist(), counts["tag"].to_pylist()):
            user_tags.setdefault(m, []).append(tag)
    return _genre_content(movies["movieId"].to_pylist(), movies["title"].to_pylist(), genres, user_tags)


def _tsv(data: bytes, names: list[str]) -> pa.Table:
    return pacsv.read_csv(
        pa.BufferReader(data),
        read_options=pacsv.ReadOptions(column_names=names),
        parse_options=pacsv.ParseOptions(delimiter="\t", quote_char=False),
        convert_options=pacsv.ConvertOptions(column_types={n: pa.string() for n in names}))


MIND_BEHAVIORS = ["impression_id", "user_id", "time", "history", "impressions"]
MIND_NEWS = ["item_id", "category", "subcategory", "title", "description", "url",
             "title_entities", "abstract_entities"]


def read_mind(folder: str) -> tuple[pa.Table, pa.Table]:
    """MIND ``behaviors.tsv`` -> events (with ``dt``); ``news.tsv`` -> catalog content."""
    import pandas as pd
    paths = {n: storage.join(folder, n) for n in ("behaviors.tsv", "news.tsv")}
    fs, _ = storage.resolve(folder)
    missing = [u for u in paths.values() if not fs.get_file_info(storage.resolve(u)[1]).is_file]
    if missing:
        raise ValueError(f"{folder}: --format mind needs a folder with behaviors.tsv and news.tsv "
                         f"(missing: {', '.join(missing)})")
    b = _tsv(storage.read_bytes(paths["behaviors.tsv"]), MIND_BEHAVIORS)
    when = pd.to_datetime(b["time"].to_pandas(), format="%m/%d/%Y %I:%M:%S %p", utc=True, errors="coerce")
    if when.isna().any():
        row = int(when.isna().to_numpy().argmax())
        raise ValueError(f"{paths['behaviors.tsv']}: row {row + 1}: time {b['time'][row].as_py()!r} "
                         "is not MM/DD/YYYY hh:mm:ss AM/PM")
    ts = pa.array(when).cast(schema.TS_TYPE)
    shown = pc.split_pattern(pc.fill_null(b["impressions"], ""), " ")
    rows = pc.list_parent_indices(shown)
    token = pc.list_flatten(shown)
    keep = pc.not_equal(token, "")
    rows, token = rows.filter(keep), token.filter(keep)
    item = pc.replace_substring_regex(token, r"-[01]$", "")
    clicked = pc.ends_with(token, "-1")
    users, at = b["user_id"].combine_chunks(), ts
    imp = (pc.take(users, rows), item, pa.array(["impression"] * len(item)), pc.take(at, rows))
    crow = rows.filter(clicked)
    clk = (pc.take(users, crow), item.filter(clicked), pa.array(["click"] * len(crow)), pc.take(at, crow))
    # each user's history, from their first row: clicks on the day before the log, in order
    order = pc.sort_indices(pa.table({"u": users, "t": at}), [("u", "ascending"), ("t", "ascending")])
    u_sorted = pc.take(users, order).to_numpy(zero_copy_only=False)
    first_rows = order.to_numpy()[np.r_[True, u_sorted[1:] != u_sorted[:-1]]]
    hist = pc.split_pattern(pc.fill_null(pc.take(b["history"], pa.array(first_rows)), ""), " ")
    hrow = pc.list_parent_indices(hist).to_numpy()
    htok = pc.list_flatten(hist)
    lengths = pc.list_value_length(hist).to_numpy(zero_copy_only=False)
    pos = np.arange(len(hrow)) - np.repeat(np.r_[0, np.cumsum(lengths)[:-1]], lengths)
    day0 = (int(pc.min(at).as_py().timestamp() * 1_000_000) // schema.US_PER_DAY - 1) * schema.US_PER_DAY
    hts = pa.array(day0 + pos.astype(np.int64) * 1_000_000, pa.int64()).cast(schema.TS_TYPE)
    hkeep = pc.not_equal(htok, "")
    his = (pc.take(pc.take(users, pa.array(first_rows)), pa.array(hrow)).filter(hkeep),
           htok.filter(hkeep), pa.array(["click"] * int(pc.sum(hkeep).as_py() or 0)), hts.filter(hkeep))
    cols = [pa.chunked_array([a, c, h]) for a, c, h in zip(imp, clk, his)]
    events = _events(*cols)
    news = _tsv(storage.read_bytes(paths["news.tsv"]), MIND_NEWS)
    return events, mind_content(news)


def mind_content(news: pa.Table) -> pa.Table:
    """news.tsv rows -> catalog content: title, category, subcategory, description, tags
    (the labels of the title's and abstract's entities, each once)."""
    import json
    tags = []
    for a, b in zip(news["title_entities"].to_pylist(), news["abstract_entities"].to_pylist()):
        labels = []
        for text in (a, b):
            try:
                labels += [e["Label"] for e in json.loads(text or "[]") if e.get("Label")]
            except (ValueError, TypeError, AttributeError):
                pass                 # a malformed entity list: no tags from it
        tags.append(list(dict.fromkeys(labels)))
    return pa.table({"item_id": news["item_id"], "title": news["title"], "category": news["category"],
                     "subcategory": news["subcategory"], "description": news["description"],
                     "tags": pa.array(tags, pa.list_(pa.string()))})


def write_days(events: pa.Table, events_uri: str, threads: int = 8) -> int:
    """``events`` (with ``dt``) as one file per day, ``dt=D/part-00000.parquet``, in time
    order, by a bounded thread pool (``storage.write_partitioned``). Returns the days."""
    return len(storage.write_partitioned(events.sort_by("ts"), events_uri, "part-00000.parquet", threads))


def import_events(fmt: str, path: str, out_uri: str,
                  start: dt.datetime = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)) -> ImportSummary:
    """Import ``path`` in format ``fmt`` to ``out_uri/events/`` and ``out_uri/catalog/``."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    content = None
    if fmt == "mind":
        events, content = read_mind(path.rstrip("/"))
    elif fmt == "movielens":
        events, content = read_movielens(path), read_movielens_items(path)
    else:
        events = read_sasrec(path, start)
    if events.num_rows == 0:
        raise ValueError(f"{path}: no interactions found")
    events_uri = storage.join(out_uri, "events")
    if storage.list_files(events_uri):
        raise FileExistsError(f"{events_uri} already holds events; choose another --out")
    catalog = catalog_of(events, content)           # before anything is written
    write_days(events, events_uri)
    catalog_uri = storage.join(out_uri, "catalog", "catalog.parquet")
    storage.write_parquet(catalog, catalog_uri)
    days = pc.min_max(events["dt"])
    return ImportSummary(events_uri, catalog_uri, len(pc.unique(events["user_id"])),
                         len(pc.unique(events["item_id"])), events.num_rows,
                         days["min"].as_py(), days["max"].as_py())
