"""Typed configuration: every knob is a dataclass field.

Loaded from YAML, then overridden by ``section.field=value`` strings from the
command line. Types and bounds are checked field by field, so a bad value
fails with a message naming the field (``train.epochs must be >= 1, got 0``).
Config is data only: values are parsed with ``yaml.safe_load``, never eval'd.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

import yaml

from raymedia.kinds import KINDS as MODEL_KINDS


class ConfigError(ValueError):
    pass


def _f(default: Any, *, lo: float | None = None, hi: float | None = None, gt: float | None = None,
       doc: str = "") -> Any:
    """A field with bounds: ``lo <= value <= hi`` and ``value > gt``."""
    return field(default=default, metadata={"lo": lo, "hi": hi, "gt": gt, "doc": doc})


def split_names(text: str) -> tuple[str, ...]:
    """The names of a comma-separated field (``train.models``, the ``rules`` lists), blanks dropped."""
    return tuple(v.strip() for v in text.split(",") if v.strip())


def _names(doc: str) -> Any:
    """A list of names or ids, kept as one comma-separated string (what ``--set a=1,2`` gives);
    a YAML list or a single number is read as that string."""
    return field(default="", metadata={"names": True, "doc": doc})


# keys that moved to the section of the stage that reads them: an old key fails naming the new
# one (silently ignoring it, or reading it as before, would run with a setting the user did not ask for)
MOVED = {
    "score.exclude_seen": "data.exclude_seen",
    "score.shuffle_partitions": "state.shuffle_partitions",
    "data.incremental": "state.incremental",
}

# fields holding storage locations: checked as URIs (no credentials, not empty)
URI_FIELDS = ("data.events_uri", "data.catalog_uri", "output.uri", "output.models_uri")
OPTIONAL_URI_FIELDS = ("data.user_attributes_uri",)        # the same checks when set ('': none)


@dataclass
class DataConfig:
    events_uri: str = _f("out/demo/events", doc="root of the dt=YYYY-MM-DD event partitions")
    catalog_uri: str = _f("out/demo/catalog", doc="item catalog (Parquet file or directory)")
    lookback_days: int = _f(28, lo=1, hi=36600, doc="days of logs before the run date that are read")
    history_len: int = _f(50, lo=2, hi=4096, doc="events per user kept as model input")
    exclude_seen: bool = _f(True, doc="never recommend an item the user has seen: scoring masks it, "
                                      "training drops repeat targets (the models learn only what they "
                                      "may recommend) and evaluation masks it (it measures what is "
                                      "served); one key because the three must agree")
    seen_days: int = _f(0, lo=0, hi=36600, doc="data.exclude_seen masks the items a user interacted with in "
                                              "the last seen_days days (0: the whole look-back window), "
                                              "plus the model input")
    return_horizon_days: int = _f(7, lo=1, hi=366, doc="horizon of the return prediction")
    max_reject_fraction: float = _f(0.05, lo=0.0, hi=1.0,
                                    doc="share of rows breaking the contract that fails the run")
    user_attributes_uri: str = _f("", doc="optional Parquet table (file or folder) of user_id, region "
                                          "(string) and age (integer): what the catalog's regions and "
                                          "age_rating are checked against ('': none; every user then "
                                          "has rules.default_region and rules.default_age)")


@dataclass
class StateConfig:
    """The per-user state (``raymedia/data/state.py``) that scoring, training and evaluation read."""
    incremental: bool = _f(True, doc="nightly: merge day D-1 into the user state committed with D-1 "
                                     "instead of re-reading the window (rebuilds when it is missing)")
    shuffle_partitions: int = _f(4, lo=1, doc="hash partitions of the user group-by that builds it")


@dataclass
class ContentConfig:
    """Items as content (``models/content.py``): both models add a content vector, learned
    from the catalog's text and metadata, to each item's id row, so new items are scored
    from what they are on their first day."""
    enabled: Literal["auto", "on", "off"] = _f(
        "off", doc="auto: on when the catalog has any content column (description, tags, ...); off "
                   "by default until the cold-item protocol has measured it against the id-only models")
    buckets: int = _f(1 << 18, lo=2, doc="hash rows of the words and character n-grams")
    id_dropout: float = _f(0.5, lo=0.0, hi=1.0, doc="share of items whose id part each training "
                                                    "step drops, so content alone must carry meaning")


@dataclass
class TwoTowerConfig:
    dim: int = _f(64, lo=4)
    hidden: int = _f(128, lo=4)
    temperature: float = _f(0.07, gt=0.0)
    num_negatives: int = _f(512, lo=1, doc="popularity-sampled negatives per batch (plus in-batch)")
    positions_per_batch: int = _f(2048, lo=1, doc="training positions sampled per batch")
    last_items: int = _f(1, lo=0, doc="most recent history items whose embeddings join the history "
                                      "mean as user-tower input (0: the order-free mean alone)")


@dataclass
class SequenceConfig:
    dim: int = _f(64, lo=4)
    layers: int = _f(2, lo=1)
    heads: int = _f(2, lo=1)
    dropout: float = _f(0.2, lo=0.0, hi=0.9)
    return_weight: float = _f(0.5, lo=0.0, doc="weight of the return loss")
    category_weight: float = _f(0.2, lo=0.0, doc="weight of the next-category loss")
    loss: Literal["softmax", "sampled", "gbce"] = _f(
        "sampled", doc="next-item loss: sampled softmax with logQ correction (popularity-sampled "
                       "negatives; no worse than the full softmax on ml-latest-small, 2.5x faster "
                       "epochs at 10k items), full softmax (SASRec+), or gBCE (Petrov & Macdonald 2023)")
    num_negatives: int = _f(512, lo=1, doc="negatives per step of the sampled and gbce losses")
    gbce_t: float = _f(0.75, lo=0.0, hi=1.0, doc="gBCE calibration t (0: plain BCE, 1: fully calibrated)")


@dataclass
class TrainConfig:
    epochs: int = _f(200, lo=1, doc="epoch budget: the most epochs a full retrain runs; early "
                                    "stopping (patience) and time_budget_s usually end it sooner")
    time_budget_s: float = _f(0.0, lo=0.0, doc="seconds of training per model (0: no limit); the "
                                               "epoch that crosses it is the last")
    batch_size: int = _f(16, lo=1, doc="sequences per step (small: on logs of a few thousand users the "
                                         "number of optimizer steps, not their size, limits quality; "
                                         "raise it with lr for millions of users on GPUs)")
    lr: float = _f(3e-3, gt=0.0)
    weight_decay: float = _f(1e-4, lo=0.0)
    num_workers: int = _f(1, lo=1, doc="Ray Train workers (DDP ranks)")
    cpus_per_worker: float = _f(1.0, gt=0.0, doc="CPUs per training worker (fractions share a CPU; "
                                "torch threads: the whole part, at least 1)")
    use_gpu: Literal["auto", "yes", "no"] = _f("auto", doc="auto: use GPUs when the cluster has them")
    seed: int = _f(0)
    models: str = _f("two_tower,sequence", doc="comma-separated models to train")
    schedule: Literal["full", "warm", "auto"] = _f(
        "full", doc="full retrain; warm start from the latest model (new items appended); "
                    "auto: warm, but full once the last full retrain is full_every_days old")
    full_every_days: int = _f(7, lo=1, doc="auto schedule: days between full retrains")
    warm_epochs: int = _f(2, lo=1, doc="epochs of a warm start")
    patience: int = _f(30, lo=0, doc="early stopping: stop after this many epochs without a better "
                                      "validation NDCG@10 and keep the best epoch's weights (0: off)")
    val_share: float = _f(1.0, gt=0.0, hi=1.0, doc="share of users whose second-to-last event is held "
                                                   "out as the validation target (a fixed hash sample)")
    lr_schedule: Literal["cosine", "constant"] = _f(
        "cosine", doc="cosine: linear warm-up, then cosine decay to 0.1 x lr over the epoch or "
                      "time budget, whichever runs out first")
    warmup_steps: int = _f(50, lo=0, doc="optimizer steps of linear learning-rate warm-up")


@dataclass
class ScoreConfig:
    top_k: int = _f(50, lo=1)
    batch_size: int = _f(512, lo=1, doc="users per map_batches call")
    concurrency: int = _f(1, lo=1, doc="scoring actors (one per GPU on a GPU cluster)")
    num_cpus: float = _f(1.0, lo=0.0, doc="CPUs per scoring actor")
    recommender: Literal[MODEL_KINDS] = _f("sequence", doc="model whose top-K is written")
    item_chunk: int = _f(65536, lo=1, doc="items scored per matrix product (bounds memory)")
    precision: Literal["fp32", "bf16", "fp16"] = _f("fp32", doc="score matmul precision")
    rows_per_file: int = _f(200_000, lo=1, doc="users per output file (few large files per day)")


@dataclass
class RulesConfig:
    """List rules (``raymedia/rules.py``): a deterministic re-ranking of each user's exact top-N
    candidates into the top_k that is written. Every rule is off by default; with none set
    scoring writes exactly the recommender's top-K. Lists of ids, categories or tags are
    YAML lists or comma-separated strings."""
    candidates: int = _f(0, lo=0, doc="exact top-N of the recommender re-ranked by the rules (0: 4 x score.top_k)")
    collapse_series: Literal["off", "best", "next"] = _f(
        "off", doc="one item per catalog series_id: best, the best-scored candidate; next, the user's "
                   "next unwatched episode among the candidates (from the start of a series they have "
                   "not watched; the best-scored one when none is after their last), in the series' place")
    dedup_key: Literal["off", "title", "description"] = _f(
        "off", doc="near-duplicates: one item per value of this catalog column (case, spacing and "
                   "punctuation ignored), the best-scored")
    max_per_category: int = _f(0, lo=0, doc="at most this many items of one category per list (0: no cap)")
    max_per_subcategory: int = _f(0, lo=0, doc="at most this many items of one catalog subcategory (0: no cap)")
    max_per_series: int = _f(0, lo=0, doc="at most this many items of one catalog series_id (0: no cap)")
    min_categories: int = _f(0, lo=0, doc="at least this many distinct categories per list, as far as "
                                          "the candidates allow (0: off)")
    fresh_boost: float = _f(0.0, lo=0.0, doc="freshness: weight w of the boost w * 2^(-age / half-life) "
                                             "(0: off); needs fresh_half_life_days")
    fresh_half_life_days: float = _f(0.0, lo=0.0, doc="age in days at which the freshness boost halves")
    fresh_mode: Literal["add", "multiply"] = _f(
        "multiply", doc="add the boost to the model score (model-score units), or multiply by "
                        "(1 + boost) (a negative score is divided, so a boost always raises)")
    max_age_days: float = _f(0.0, lo=0.0, doc="never list items published more than this many days "
                                              "before the run (0: off; items without a date stay)")
    include_items: str = _names("only these item ids may be listed (with the other include_* "
                                "lists: items matching any of them)")
    include_categories: str = _names("only items of these categories may be listed")
    include_tags: str = _names("only items with one of these tags may be listed")
    exclude_items: str = _names("these item ids are never listed")
    exclude_categories: str = _names("items of these categories are never listed")
    exclude_tags: str = _names("items with any of these tags are never listed")
    pins: str = _names("editorial pins, 'item_id@position,...' (positions 1-based, <= score.top_k): "
                       "the item at that place of every list where it may be shown (not seen by "
                       "the user, recommendable, not excluded)")
    explore_share: float = _f(0.0, lo=0.0, hi=1.0, doc="share of the top_k places given to exploration "
                                                       "(rules.explore), chosen per (user, day) by a hash, at "
                                                       "the end of the list")
    explore: Literal["categories", "new", "both"] = _f(
        "categories", doc="what exploration picks among the candidates: items outside the categories of the "
                          "user's history; new items (no training interaction, or published within "
                          "explore_new_days of the run); or either")
    explore_new_days: float = _f(0.0, lo=0.0, doc="rules.explore new/both: items published at most this many "
                                                  "days before the run also count as new (0: only items "
                                                  "without a training interaction)")
    default_region: str = _f("", doc="eligibility: the region of a user without one (not in "
                                     "data.user_attributes_uri, or a null region); '': none, so only items "
                                     "the catalog shows everywhere")
    default_age: int = _f(0, lo=0, hi=200, doc="eligibility: the age of a user without one; items whose "
                                               "catalog age_rating is above it are not shown to them")


@dataclass
class SponsoredConfig:
    """Sponsored slots (``raymedia/sponsored.py``): campaigns fill fixed positions of each list by
    expected value (bid x the recommender's click probability), every cap held across the run.
    Off by default (no campaigns_uri)."""
    campaigns_uri: str = _f("", doc="Parquet file of campaigns, one row each: campaign_id, item_id, bid (> 0), "
                                    "cap (lists per run, >= 0), optional categories (list of strings: "
                                    "targeting; empty or null: everyone); empty: off")
    slots: str = _names("1-based list positions the campaigns fill, in order (e.g. 3,8; <= score.top_k, "
                        "none a rules.pins position); set with campaigns_uri")


@dataclass
class EvalConfig:
    """The evaluation run (``raymedia/evaluate.py``): its own actor pool, sized apart from scoring."""
    k: int = _f(10, lo=1)
    enabled: bool = _f(True)
    batch_size: int = _f(512, lo=1, doc="users per map_batches call")
    concurrency: int = _f(1, lo=1, doc="evaluation actors (one per GPU on a GPU cluster)")
    num_cpus: float = _f(1.0, lo=0.0, doc="CPUs per evaluation actor (its torch threads: the whole part, "
                                          "at least 1)")
    item_chunk: int = _f(65536, lo=1, doc="items ranked per matrix product (bounds memory)")


@dataclass
class BaselinesConfig:
    """The strong classic baselines fitted in every evaluation run (``raymedia/baselines.py``)."""
    als: bool = _f(True, doc="fit implicit's ALS (the [eval] extra) next to the models")
    als_factors: int = _f(128, lo=1)
    als_iterations: int = _f(15, lo=1)
    als_regularization: float = _f(0.01, lo=0.0, doc="implicit's ALS L2 regularisation")
    als_alpha: float = _f(1.0, gt=0.0, doc="confidence of an observed interaction")
    ease: bool = _f(True, doc="fit EASE (Steck 2019, closed form) next to the models")
    ease_lambda: float = _f(500.0, gt=0.0, doc="EASE L2 regularisation")
    ease_max_items: int = _f(20_000, lo=1, doc="EASE inverts an items x items matrix: skipped "
                                                "(with the reason logged) above this catalog size")
    seed: int = _f(0)


@dataclass
class OutputConfig:
    uri: str = _f("out/demo/scores", doc="root of the committed outputs")
    models_uri: str = _f("out/demo/models", doc="model checkpoints")
    gc_grace_minutes: float = _f(60.0, lo=1.0, hi=525_600.0,
                                 doc="an uncommitted run directory whose heartbeat is older than "
                                     "this is collected (runs beat every 30 s)")


@dataclass
class StorageConfig:
    """Object-store settings that are not secrets. Credentials come only from the standard
    AWS chain (environment, ~/.aws, instance role), never from this config."""
    endpoint_url: Optional[str] = _f(None, doc="S3-compatible endpoint (else AWS_ENDPOINT_URL / AWS)")
    region: Optional[str] = _f(None, doc="S3 region (else AWS_REGION / the AWS config)")


@dataclass
class RayConfig:
    address: Optional[str] = _f(None, doc="Ray address; None starts or joins a local Ray")
    num_cpus: Optional[int] = _f(None, lo=1, doc="CPUs for a local Ray started by raymedia")
    progress_bars: bool = _f(True)


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    state: StateConfig = field(default_factory=StateConfig)
    content: ContentConfig = field(default_factory=ContentConfig)
    two_tower: TwoTowerConfig = field(default_factory=TwoTowerConfig)
    sequence: SequenceConfig = field(default_factory=SequenceConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    rules: RulesConfig = field(default_factory=RulesConfig)
    sponsored: SponsoredConfig = field(default_factory=SponsoredConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    baselines: BaselinesConfig = field(default_factory=BaselinesConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    ray: RayConfig = field(default_factory=RayConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def hash(self) -> str:
        """Stable digest of every knob, recorded in commits so outputs name their config."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def model_names(self) -> list[str]:
        return list(split_names(self.train.models))


def _check(value: Any, tp: Any, name: str) -> Any:
    """Coerce/check one value against its annotated type."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _check(value, args[0], name)
    if origin is Literal:
        choices = typing.get_args(tp)
        if isinstance(value, bool) and {"on", "off"} <= set(choices):    # YAML 1.1 reads on/off as booleans
            value = "on" if value else "off"
        if value not in choices:
            raise ConfigError(f"{name} must be one of {list(choices)}, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name} must be an integer, got {value!r}")
        if abs(value) >= 2 ** 63:
            raise ConfigError(f"{name} is out of range (|value| < 2**63), got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str) and re.fullmatch(r"\s*[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+\s*", value):
            value = float(value)            # YAML 1.1 reads 3e-3 (no dot) as text
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{name} must be a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{name} must be a string, got {value!r}")
        return value
    raise ConfigError(f"{name}: unsupported type {tp}")


def _build(cls: type, data: dict, prefix: str = "") -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(fields)
    moved = [f"{prefix}{u} is now {MOVED[prefix + u]}"
             for u in sorted(map(str, unknown)) if prefix + u in MOVED]
    if moved:
        raise ConfigError(f"renamed config key(s): {'; '.join(moved)}; set the new key instead")
    if unknown:
        raise ConfigError(f"unknown config field(s): {', '.join(prefix + str(u) for u in sorted(map(str, unknown)))}"
                          f" (known: {', '.join(sorted(fields))})")
    kwargs = {}
    for name, f in fields.items():
        full = prefix + name
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, data.get(name, {}), full + ".")
            continue
        value = data.get(name, f.default if f.default is not dataclasses.MISSING else None)
        if f.metadata.get("names") and isinstance(value, (list, int, float)) and not isinstance(value, bool):
            value = ",".join(map(str, value if isinstance(value, list) else [value]))
        value = _check(value, tp, full)
        lo, hi, gt = f.metadata.get("lo"), f.metadata.get("hi"), f.metadata.get("gt")
        if value is not None and lo is not None and value < lo:
            raise ConfigError(f"{full} must be >= {lo}, got {value!r}")
        if value is not None and hi is not None and value > hi:
            raise ConfigError(f"{full} must be <= {hi}, got {value!r}")
        if value is not None and gt is not None and value <= gt:
            raise ConfigError(f"{full} must be > {gt}, got {value!r}")
        kwargs[name] = value
    return cls(**kwargs)


def _check_locations(cfg: Config) -> None:
    """Storage locations: real URIs without credentials; the endpoint a plain http(s) URL."""
    from raymedia import storage
    for name in URI_FIELDS + OPTIONAL_URI_FIELDS:
        section, key = name.split(".")
        value = getattr(getattr(cfg, section), key)
        if name in OPTIONAL_URI_FIELDS and value == "":
            continue
        try:
            storage.check_uri(value, name)
        except storage.StorageError as exc:
            raise ConfigError(str(exc)) from None
    ep = cfg.storage.endpoint_url
    if ep is not None:
        m = re.fullmatch(r"https?://([A-Za-z0-9.-]+|\[[0-9A-Fa-f:]+\])(:\d{1,5})?/?", ep)
        if not m:
            raise ConfigError(f"storage.endpoint_url must look like http(s)://host[:port], got "
                              f"{storage.redact(ep)!r}" + (" (credentials are not allowed in it)"
                                                           if "@" in ep else ""))
    if cfg.storage.region is not None and not re.fullmatch(r"[a-z0-9-]{1,32}", cfg.storage.region):
        raise ConfigError(f"storage.region must look like us-east-1, got {cfg.storage.region!r}")


def _cross_checks(cfg: Config) -> None:
    _check_locations(cfg)
    if cfg.sequence.dim % cfg.sequence.heads:
        raise ConfigError(f"sequence.dim ({cfg.sequence.dim}) must be divisible by "
                          f"sequence.heads ({cfg.sequence.heads})")
    if cfg.two_tower.last_items > cfg.data.history_len:
        raise ConfigError(f"two_tower.last_items ({cfg.two_tower.last_items}) must be <= "
                          f"data.history_len ({cfg.data.history_len})")
    from raymedia.rules import ListRules
    ListRules.from_config(cfg)          # ConfigError naming the rules.* key
    from raymedia.sponsored import SlotPlan
    SlotPlan.from_config(cfg)           # ... and the sponsored.* key
    if cfg.sponsored.campaigns_uri:
        from raymedia import storage
        try:
            storage.check_uri(cfg.sponsored.campaigns_uri, "sponsored.campaigns_uri")
        except storage.StorageError as exc:
            raise ConfigError(str(exc)) from None
    unknown = set(cfg.model_names()) - set(MODEL_KINDS)
    if unknown:
        raise ConfigError(f"train.models has unknown model(s) {sorted(unknown)}; "
                          f"choose from {', '.join(MODEL_KINDS)}")


def from_dict(data: dict) -> Config:
    cfg = _build(Config, data)
    _cross_checks(cfg)
    return cfg


MAX_YAML_BYTES = 1 << 20        # a config file is a few KiB
MAX_YAML_NODES = 100_000         # values after expanding aliases (a 545-byte alias bomb has 10**9)


def _yaml(text: str | bytes, source: str) -> Any:
    """``yaml.safe_load`` for untrusted text, refusing what makes it hang or explode:
    more than MAX_YAML_BYTES, or aliases that expand to more than MAX_YAML_NODES values
    (counted on the composed graph, shared nodes once per reference, in linear time)."""
    if len(text) > MAX_YAML_BYTES:
        raise ConfigError(f"{source}: {len(text)} bytes; a config is at most {MAX_YAML_BYTES}")
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        sizes: dict[int, int] = {}

        def size(n: yaml.Node) -> int:
            if id(n) not in sizes:
                sizes[id(n)] = 0        # a recursive alias counts as one value
                kids = ([v for pair in n.value for v in pair] if isinstance(n, yaml.MappingNode) else
                        n.value if isinstance(n, yaml.SequenceNode) else [])
                sizes[id(n)] = 1 + sum(size(k) for k in kids)
                if sizes[id(n)] > MAX_YAML_NODES:
                    raise ConfigError(f"{source}: its aliases expand to more than {MAX_YAML_NODES} "
                                      "values (a YAML alias bomb?); refusing to load it")
            return sizes[id(n)]

        if node is not None:
            size(node)
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from exc
    except RecursionError:
        raise ConfigError(f"{source}: nested too deeply to be a config") from None


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``section.field=value`` overrides (values parsed as YAML scalars)."""
    data = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.field=value")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        node = data
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {key!r}: {p} is not a section (it is {node!r})")
        node[parts[-1]] = _yaml(raw, f"override {key!r}") if raw.strip() else ""
    return data


def load_raw(path: str) -> dict:
    """The mapping a YAML config file holds (only what it sets)."""
    from raymedia import storage
    data = _yaml(storage.read_bytes(path), path)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections "
                          f"(data:, train:, ...), got a {type(data).__name__}")
    return data


def load(path: str | None = None, overrides: list[str] | None = None) -> Config:
    """Config from an optional YAML file plus overrides; defaults for the rest."""
    return from_dict(apply_overrides(load_raw(path) if path else {}, overrides or []))


def dump(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
