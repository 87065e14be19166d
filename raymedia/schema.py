"""Data contracts (Arrow schemas) and their validation.

Every table that crosses a module or storage boundary is checked here, so a
broken input fails with a message naming the column instead of deep inside
a model.
"""

from __future__ import annotations

import datetime as dt
import enum

import numpy as np

import pyarrow as pa
import pyarrow.compute as pc

class EventType(enum.IntEnum):
    """Event types in increasing order of engagement. ``events`` files name them in lower
    case (``"play"``); user states (their ``events`` column) and model inputs hold the code.
    The codes are written to disk and learned by models (embedding rows, pooling weights), so
    they never change: 0 is padding, a new type takes the next free code."""
    IMPRESSION = 1
    CLICK = 2
    PLAY = 3
    COMPLETE = 4
    LIKE = 5
    SHARE = 6

    @property
    def label(self) -> str:
        """The name in the events contract."""
        return self.name.lower()

    @classmethod
    def labels(cls) -> tuple[str, ...]:
        """Every valid ``event`` value of the events contract, in code order."""
        return tuple(e.label for e in cls)

    @classmethod
    def encode(cls, names: pa.Array | pa.ChunkedArray) -> pa.Array:
        """Contract names -> int8 codes (null for a name that is not an event type)."""
        codes = pa.array([e.value for e in cls], pa.int8())
        return codes.take(pc.index_in(names, value_set=pa.array(cls.labels())))

    @classmethod
    def decode(cls, codes) -> pa.Array:
        """Codes (an integer array) -> contract names."""
        names = [None] * NUM_EVENT_CODES
        for e in cls:
            names[e] = e.label
        return pa.array(names, pa.string()).take(pa.array(codes))


NUM_EVENT_CODES = max(EventType) + 1        # with the padding code 0: the models' embedding rows
# How much an event tells about taste, used when pooling histories.
EVENT_WEIGHT: dict[EventType, float] = {
    EventType.IMPRESSION: 0.0, EventType.CLICK: 0.5, EventType.PLAY: 1.0,
    EventType.COMPLETE: 1.5, EventType.LIKE: 2.0, EventType.SHARE: 2.0,
}
US_PER_DAY = 86_400_000_000                 # microseconds (the unit of every timestamp) per day

TS_TYPE = pa.timestamp("us", tz="UTC")

EVENTS = pa.schema([
    pa.field("user_id", pa.int64(), nullable=False),
    pa.field("item_id", pa.int64(), nullable=False),
    pa.field("event", pa.string(), nullable=False),
    pa.field("ts", TS_TYPE, nullable=False),
    pa.field("dwell_s", pa.float32(), nullable=True),
])
CATALOG = pa.schema([
    pa.field("item_id", pa.int64(), nullable=False),
    pa.field("title", pa.string()),
    pa.field("category", pa.string()),
    pa.field("published_at", TS_TYPE),
    pa.field("available", pa.bool_()),
])
# Optional content columns of the catalog, kept when a catalog file has them (each on its
# own): what an item is, so that a new item can be understood on its first day. A catalog
# with none of them reads exactly as before. ``embedding`` is a vector computed elsewhere
# (a large text or vision model in its own job); every non-null row has the same size.
CATALOG_CONTENT = pa.schema([
    pa.field("description", pa.string()),
    pa.field("tags", pa.list_(pa.string())),
    pa.field("subcategory", pa.string()),
    pa.field("series_id", pa.string()),
    pa.field("episode", pa.int32()),
    pa.field("duration_s", pa.float32()),
    pa.field("language", pa.string()),
    pa.field("embedding", pa.list_(pa.float32())),
])
# Optional eligibility columns of the catalog (``rules.Eligibility``), kept when a catalog
# file has them: where an item may be shown and from which age. Without them every item may
# be shown to everyone (and content, ``content.enabled: auto``, does not count them).
CATALOG_ELIGIBILITY = pa.schema([
    pa.field("regions", pa.list_(pa.string())),     # regions it may be shown in; null or empty: everywhere
    pa.field("age_rating", pa.int32()),              # minimum age of its viewers; null: 0
])
# The optional user-attributes table (``data.user_attributes_uri``): what the catalog's
# eligibility columns are checked against. ``user_id`` has the events' id kind; a null
# ``region`` or ``age`` (or a user missing from the table) takes ``rules.default_*``.
USER_ATTRIBUTES = pa.schema([
    pa.field("user_id", pa.int64(), nullable=False),
    pa.field("region", pa.string()),
    pa.field("age", pa.int32()),
])
RECOMMENDATIONS = pa.schema([
    pa.field("user_id", pa.int64(), nullable=False),
    pa.field("items", pa.list_(pa.int64())),
    pa.field("scores", pa.list_(pa.float32())),
    pa.field("model_version", pa.string()),
    pa.field("generated_at", TS_TYPE),
])
# added to the recommendations when list rules are set (``raymedia/rules.py``): per item, the
# rule that placed it (model / fresh / explore / pinned) and its raw model score
RULE_COLUMNS = pa.schema([
    pa.field("reason", pa.list_(pa.string())),
    pa.field("model_scores", pa.list_(pa.float32())),
])
PREDICTIONS = pa.schema([
    pa.field("user_id", pa.int64(), nullable=False),
    pa.field("p_return_7d", pa.float32()),
    pa.field("next_category", pa.string()),
    pa.field("n_events", pa.int32()),
    pa.field("model_version", pa.string()),
])


class ContractError(ValueError):
    """Input that breaks a data contract structurally (missing column, bad type)."""


class RejectThresholdExceeded(RuntimeError):
    """Too many input rows broke the events contract: the input is treated as broken."""


class EmptyInput(ValueError):
    """The window's event partitions exist but hold no rows: nothing to score."""


def id_type(t: pa.DataType) -> pa.DataType:
    """Ids are int64 or string; narrower ints widen, large_string narrows."""
    if pa.types.is_integer(t):
        return pa.int64()
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return pa.string()
    raise ContractError(f"id columns must be integer or string, got {t}")


def with_id_types(schema: pa.Schema, user_type: pa.DataType | None = None,
                  item_type: pa.DataType | None = None) -> pa.Schema:
    """The contract schema with the id types of the input (outputs keep them)."""
    def swap(f: pa.Field) -> pa.Field:
        t = {"user_id": user_type, "item_id": item_type}.get(f.name)
        if f.name == "items" and item_type is not None:
            return f.with_type(pa.list_(item_type))
        return f.with_type(t) if t is not None else f
    return pa.schema([swap(f) for f in schema])


def conform(table: pa.Table, schema: pa.Schema, source: str = "input") -> pa.Table:
    """Select and cast the contract's columns, in contract order.

    Id columns keep their own type (int64 or string); other columns are cast.
    Raises ContractError naming the source and column when a required column
    is missing or cannot be cast.
    """
    columns = []
    for field in schema:
        if field.name not in table.column_names:
            if field.nullable and field.name not in ("user_id", "item_id"):
                columns.append(pa.nulls(table.num_rows, field.type))
                continue
            raise ContractError(
                f"{source}: missing required column '{field.name}' "
                f"(has: {', '.join(table.column_names)})")
        col = table.column(field.name)
        target = id_type(col.type) if field.name in ("user_id", "item_id") else field.type
        if pa.types.is_timestamp(col.type) and pa.types.is_timestamp(target):
            col = _utc(col)
        try:
            columns.append(col.cast(target, safe=not _finer(col.type, target)))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise ContractError(
                f"{source}: column '{field.name}' of type {col.type} cannot be read as "
                f"{target}: {exc}") from exc
    return pa.Table.from_arrays(columns, names=schema.names)


def conform_catalog(table: pa.Table, source: str = "catalog") -> pa.Table:
    """``conform`` to ``CATALOG``, plus whichever ``CATALOG_CONTENT`` and ``CATALOG_ELIGIBILITY``
    columns the table has (cast to the contract's types; ContractError naming the column
    otherwise; ``age_rating`` must be an integer column)."""
    out = conform(table, CATALOG, source)
    if "age_rating" in table.column_names:
        _check_kind(table.schema, "age_rating", (pa.types.is_integer, pa.types.is_null), "an integer", source)
    present = pa.schema([f for f in (*CATALOG_CONTENT, *CATALOG_ELIGIBILITY) if f.name in table.column_names])
    if len(present):
        content = conform(table.select(present.names), present, source)
        for name in present.names:
            out = out.append_column(present.field(name), content[name])
    return out


def _utc(col):
    """Naive timestamps are UTC by contract; zoned ones are instants already."""
    return pc.assume_timezone(col, "UTC") if col.type.tz is None else col


def _finer(t: pa.DataType, target: pa.DataType) -> bool:
    """A nanosecond timestamp read as microseconds: truncating is the one lossy cast allowed."""
    return pa.types.is_timestamp(t) and pa.types.is_timestamp(target) and t.unit == "ns" != target.unit


REQUIRED_EVENT_COLUMNS = ("user_id", "item_id", "event", "ts")
REJECT_REASONS = ("null_user_id", "null_item_id", "null_ts", "unparseable_ts", "unknown_event",
                  "negative_dwell", "ts_outside_partition", "duplicate")


def _readable(t: pa.DataType, *kinds) -> bool:
    if pa.types.is_dictionary(t):
        t = t.value_type
    return any(k(t) for k in kinds)


_EVENT_COLUMN_TYPES = {
    "user_id": (pa.types.is_integer, pa.types.is_string, pa.types.is_large_string),
    "item_id": (pa.types.is_integer, pa.types.is_string, pa.types.is_large_string),
    "event": (pa.types.is_string, pa.types.is_large_string),
    "ts": (pa.types.is_timestamp, pa.types.is_string, pa.types.is_large_string),
    "dwell_s": (pa.types.is_integer, pa.types.is_floating, pa.types.is_null),
}


def check_columns(events_schema: pa.Schema | list[str], source: str) -> None:
    """Structural check of a file's schema: required columns present, types readable.

    Names the file and the column, so a broken file fails before any work starts.
    """
    names = events_schema if isinstance(events_schema, list) else events_schema.names
    for col in REQUIRED_EVENT_COLUMNS:
        if col not in names:
            raise ContractError(f"{source}: missing required column '{col}' (has: {', '.join(names)})")
    if isinstance(events_schema, list):
        return
    for col, kinds in _EVENT_COLUMN_TYPES.items():
        if col in names and not _readable(events_schema.field(col).type, *kinds):
            raise ContractError(f"{source}: column '{col}' has type {events_schema.field(col).type}, "
                                "which cannot be read as the events contract's type")


def check_consistent(file_schemas: dict[str, pa.Schema]) -> None:
    """Every file of a run must give ids one kind of type (integer or string): one
    dataset cannot hold both. Raises ContractError naming a file of each kind."""
    for col in ("user_id", "item_id"):
        first: dict[str, str] = {}
        for uri, sch in file_schemas.items():
            if col not in sch.names:
                continue
            t = sch.field(col).type
            t = t.value_type if pa.types.is_dictionary(t) else t
            kind = "integer" if pa.types.is_integer(t) else "string"
            first.setdefault(kind, uri)
        if len(first) > 1:
            raise ContractError(f"column '{col}' is integer in {first['integer']} but string in "
                                f"{first['string']}; all event files must use one id type")


def read_schema(file_schemas: dict[str, pa.Schema]) -> pa.Schema:
    """The one schema every event file of a run is read with (each file cast to it as
    it is read, so files written by different tools never clash): ids int64 or string,
    ``event`` string, ``dwell_s`` float32, ``ts`` UTC timestamps (nanoseconds when a
    file has them; validation truncates to microseconds) or, when any file writes
    ``ts`` as text, text parsed in validation. Columns outside the contract are not read."""
    def types(col: str) -> list[pa.DataType]:
        return [value_type(s.field(col).type) for s in file_schemas.values() if col in s.names]
    ids = [pa.field(c, pa.int64() if all(map(pa.types.is_integer, types(c))) else pa.string())
           for c in ("user_id", "item_id")]
    ts = types("ts")
    ts_type = (pa.string() if not all(map(pa.types.is_timestamp, ts)) else
               pa.timestamp("ns", tz="UTC") if any(t.unit == "ns" for t in ts) else TS_TYPE)
    return pa.schema([*ids, pa.field("event", pa.string()), pa.field("ts", ts_type),
                      pa.field("dwell_s", pa.float32())])


def check_catalog(catalog: pa.Table, source: str) -> None:
    """A catalog that would make a blank or wrong service: no rows, or items without an id."""
    if catalog.num_rows == 0:
        raise ContractError(f"{source}: the catalog has no rows; every user would get an empty "
                            "list, so nothing is scored")
    nulls = catalog["item_id"].null_count
    if nulls:
        first = pc.index(pc.is_null(catalog["item_id"]), True).as_py()
        raise ContractError(f"{source}: column 'item_id' is null in {nulls} of {catalog.num_rows} "
                            f"row(s) (first at row {first}); every catalog item needs an id")
    if "embedding" in catalog.column_names:
        _check_embedding(catalog["embedding"], source)
    if "age_rating" in catalog.column_names:
        _check_not_negative(catalog, "age_rating", source)


def _check_kind(sch: pa.Schema, col: str, kinds: tuple, what: str, source: str) -> None:
    """ContractError naming the column unless its type (or dictionary value type) is one of ``kinds``."""
    t = value_type(sch.field(col).type)
    if not any(k(t) for k in kinds):
        raise ContractError(f"{source}: column '{col}' has type {sch.field(col).type}; it must be {what}")


def _check_not_negative(table: pa.Table, col: str, source: str) -> None:
    values = pc.fill_null(table[col], 0).to_numpy().astype(np.int64)
    bad = np.flatnonzero(values < 0)
    if len(bad):
        raise ContractError(f"{source}: column '{col}' is negative in {len(bad)} row(s) "
                            f"(first at row {bad[0]}: {values[bad[0]]}); it must be >= 0")


def conform_user_attributes(table: pa.Table, source: str) -> pa.Table:
    """A user-attributes file in the ``USER_ATTRIBUTES`` contract (``user_id`` keeps its kind,
    a missing ``region`` or ``age`` column reads as nulls). ContractError naming the file and
    column: no ``user_id``, neither ``region`` nor ``age``, a column of the wrong type (a
    region that is not text, an age that is not an integer), a null ``user_id``, a negative
    age."""
    names = table.column_names
    if "user_id" not in names:
        raise ContractError(f"{source}: missing required column 'user_id' (has: {', '.join(names)})")
    if "region" not in names and "age" not in names:
        raise ContractError(f"{source}: has neither a 'region' nor an 'age' column (has: {', '.join(names)}); "
                            "a user-attributes table gives at least one")
    _check_kind(table.schema, "user_id", (pa.types.is_integer, pa.types.is_string, pa.types.is_large_string),
                "an integer or a string (the events' user_id kind)", source)
    if "region" in names:
        _check_kind(table.schema, "region", (pa.types.is_string, pa.types.is_large_string, pa.types.is_null),
                    "a string", source)
    if "age" in names:
        _check_kind(table.schema, "age", (pa.types.is_integer, pa.types.is_null), "an integer", source)
    if pa.types.is_dictionary(table.schema.field("user_id").type):
        table = table.set_column(names.index("user_id"), "user_id",
                                 table["user_id"].cast(table.schema.field("user_id").type.value_type))
    out = conform(table, USER_ATTRIBUTES, source)
    nulls = out["user_id"].null_count
    if nulls:
        first = pc.index(pc.is_null(out["user_id"]), True).as_py()
        raise ContractError(f"{source}: column 'user_id' is null in {nulls} of {out.num_rows} row(s) "
                            f"(first at row {first}); every row names a user")
    _check_not_negative(out, "age", source)
    return out


def check_user_attributes(table: pa.Table, source: str, events_user_type: pa.DataType | None = None) -> None:
    """The whole table: each user once, and ``user_id`` of the events' kind (integer or
    string) when it is known; ContractError naming the table, the column and an id."""
    counts = pc.value_counts(table["user_id"])
    twice = counts.filter(pc.greater(counts.field("counts"), 1))
    if len(twice):
        first = twice[0].as_py()
        raise ContractError(f"{source}: user_id {first['values']!r} appears {first['counts']} times "
                            f"({len(twice)} user(s) more than once); each user has one row")
    if events_user_type is not None:
        kind = ("integer" if pa.types.is_integer(table.schema.field("user_id").type) else "string")
        want = "integer" if pa.types.is_integer(value_type(events_user_type)) else "string"
        if kind != want:
            raise ContractError(f"{source}: column 'user_id' is {kind} but the events' user_id is {want}; "
                                "the user-attributes table must use the events' ids")


def _check_embedding(col: pa.ChunkedArray, source: str) -> None:
    """One size for every non-null embedding, and finite values: a model projects them."""
    col = col.combine_chunks()
    sizes = pc.list_value_length(col).to_numpy(zero_copy_only=False)
    valid = col.is_valid().to_numpy(zero_copy_only=False)
    if not valid.any():
        return
    first = int(np.flatnonzero(valid)[0])
    other = np.flatnonzero(valid & (sizes != sizes[first]))
    if len(other):
        raise ContractError(f"{source}: column 'embedding' has size {sizes[first]} at row {first} "
                            f"but {sizes[other[0]]} at row {other[0]} ({len(other)} row(s) differ); "
                            "every embedding must have one size")
    if sizes[first] == 0:
        raise ContractError(f"{source}: column 'embedding' holds empty vectors")
    values = pc.list_flatten(col).to_numpy(zero_copy_only=False)
    if not np.isfinite(values).all():
        bad = int(np.flatnonzero(~np.isfinite(values))[0]) // int(sizes[first])
        raise ContractError(f"{source}: column 'embedding' holds NaN or infinite values "
                            f"(first in row {np.flatnonzero(valid)[bad]})")


def value_type(t: pa.DataType) -> pa.DataType:
    return t.value_type if pa.types.is_dictionary(t) else t


def _parse_ts(col: pa.ChunkedArray | pa.Array, source: str) -> tuple[pa.Array, pa.Array]:
    """(timestamps in UTC, bool 'present but unparseable') for timestamp or string input."""
    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if pa.types.is_timestamp(col.type):
        return _utc(col).cast(TS_TYPE, safe=not _finer(col.type, TS_TYPE)), pa.array([False] * len(col))
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        import pandas as pd
        parsed = pd.to_datetime(col.to_pandas(), utc=True, errors="coerce", format="ISO8601")
        ts = pa.array(parsed).cast(TS_TYPE, safe=False)     # text may carry nanoseconds: truncated
        return ts, pc.and_(pc.is_valid(col), pc.is_null(ts))
    raise ContractError(f"{source}: column 'ts' of type {col.type} is not a timestamp or an ISO-8601 string")


def _as_strings(t: pa.Table) -> pa.Table:
    return pa.table({c: pc.cast(t[c], pa.string()) for c in t.column_names})


def validate_events(raw: pa.Table, source: str) -> tuple[pa.Table, pa.Table]:
    """(valid rows in the events contract, rejected rows with a ``reason``).

    Row-level problems are rejects, checked in the order of REJECT_REASONS (the
    first failing rule names the row). Structural problems (a missing column,
    a type that cannot be read) raise ContractError naming source and column.
    If a ``dt`` partition column is present, each row's UTC date must match it.
    Rejected rows keep every input value, rendered as strings.
    """
    check_columns(raw.schema, source)
    ts, bad_ts = _parse_ts(raw["ts"], source)
    body = raw.drop_columns(["ts"]).append_column("ts", ts)
    events = conform(body, EVENTS, source)
    dwell = events["dwell_s"]
    rules = [
        pc.is_null(events["user_id"]), pc.is_null(events["item_id"]),
        pc.and_(pc.is_null(ts), pc.invert(bad_ts)), bad_ts,
        pc.invert(pc.fill_null(pc.is_in(events["event"], value_set=pa.array(EventType.labels())), False)),
        pc.fill_null(pc.less(dwell, 0), False),
    ]
    if "dt" in raw.column_names:
        rules.append(_outside_partition(ts, raw["dt"]))
    else:
        rules.append(pa.array([False] * raw.num_rows))
    rules.append(_duplicates(events))
    reason = pa.nulls(raw.num_rows, pa.string())
    for name, bad in reversed(list(zip(REJECT_REASONS, rules))):
        reason = pc.if_else(pc.fill_null(bad, False), pa.scalar(name), reason)
    is_bad = pc.is_valid(reason)
    rejected = _as_strings(raw.filter(is_bad)).append_column("reason", reason.filter(is_bad))
    return events.filter(pc.invert(is_bad)), rejected


def _epoch_day(text: str | None) -> int | None:
    """Days since 1970-01-01 of a ``YYYY-MM-DD`` partition value; one no row can have if
    the value is not a date, None if it is null."""
    if text is None:
        return None
    try:
        return (dt.date.fromisoformat(text) - dt.date(1970, 1, 1)).days
    except ValueError:
        return -(2 ** 40)


def _outside_partition(ts: pa.Array, partition: pa.Array) -> pa.Array:
    """True where a row's UTC day differs from its ``dt`` partition value. Whole days from
    the integer timestamps (a per-row strftime was 2/3 of validation), each distinct
    partition value parsed once."""
    values = pc.cast(partition, pa.string())
    distinct = pc.unique(values)
    part_day = pa.array([_epoch_day(v) for v in distinct.to_pylist()], pa.int64()).take(
        pc.index_in(values, value_set=distinct))
    row_day = np.floor_divide(pc.fill_null(pc.cast(ts, pa.int64()), 0).to_numpy(), US_PER_DAY)
    mismatch = pc.not_equal(pa.array(row_day), part_day)
    return pc.fill_null(pc.and_(mismatch, pc.is_valid(ts)), False)


def _duplicates(events: pa.Table) -> pa.Array:
    """True for exact repeats of an earlier row (same user, item, event, ts) in the table."""
    df = events.select(["user_id", "item_id", "event", "ts"]).to_pandas()
    return pa.array(df.duplicated(keep="first").to_numpy(), pa.bool_())
