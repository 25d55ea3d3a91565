"""Pipeline configuration: typed, documented sections read from a TOML file.

Every field carries its documentation in `field(metadata={"doc": ...})`; unknown
keys are rejected with a suggestion, values are type-checked, and
`--set section.key=value` overrides are applied before validation.
"""

from __future__ import annotations

import dataclasses
import difflib
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recsys_mtl.errors import RecsysError


def _doc(text: str, default: Any = dataclasses.MISSING, factory: Any = dataclasses.MISSING) -> Any:
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata={"doc": text})
    return field(default=default, metadata={"doc": text})


@dataclass
class PipelineSection:
    name: str = _doc(
        "Name of the pipeline; used for output folders and the MLflow run.", "pipeline"
    )
    output_dir: str = _doc(
        "Where features, checkpoints and the model bundle go (relative to the TOML file's "
        "project root, i.e. the current directory).",
        "data/processed/pipeline",
    )
    seed: int = _doc("Seed for data generation, sampling, initialisation and shuffling.", 42)


@dataclass
class SyntheticSource:
    n_users: int = _doc("Number of users.", 2000)
    n_items: int = _doc("Number of items.", 500)
    impressions_per_user: int = _doc("Mean impressions per user (Poisson).", 150)
    latent_dim: int = _doc("Dimension of the planted user/item factors.", 4)
    n_user_segments: int = _doc("Number of user segments (a side feature that shifts factors).", 6)
    n_item_categories: int = _doc("Number of item categories (a side feature).", 10)
    click_bias: float = _doc("Global click logit offset; lower means rarer clicks.", -1.0)
    days: int = _doc("Span of the timestamps in days.", 60)


@dataclass
class MovieLensSource:
    path: str = _doc(
        "Directory with the GroupLens files (u.data... or ratings.dat...).", "data/raw/ml-100k"
    )
    variant: str = _doc("'100k' or '1m'; 'auto' detects it from the files present.", "auto")
    purchase_threshold: float = _doc("A rating at or above this counts as a purchase.", 4.0)
    download: bool = _doc(
        "Download from GroupLens (checksum verified) when the directory is empty.", False
    )
    base_url: str = _doc(
        "Where downloads come from.", "https://files.grouplens.org/datasets/movielens"
    )


@dataclass
class ImpressionsSource:
    path: str = _doc("Impressions file: Parquet (.parquet) or CSV (.csv).", "")
    users_path: str = _doc("Optional user table (user_id plus features), Parquet or CSV.", "")
    items_path: str = _doc("Optional item table (item_id plus features), Parquet or CSV.", "")
    positive_only: bool = _doc(
        "True when the file holds positives only (negatives are then sampled).", False
    )


@dataclass
class SourceSection:
    kind: str = _doc("Data source: 'synthetic', 'movielens' or 'impressions'.", "synthetic")
    synthetic: SyntheticSource = _doc("Synthetic generator settings.", factory=SyntheticSource)
    movielens: MovieLensSource = _doc("MovieLens reader settings.", factory=MovieLensSource)
    impressions: ImpressionsSource = _doc("Your own impressions files.", factory=ImpressionsSource)


FEATURE_KINDS = ("categorical", "list", "numeric", "drop")
NUMERIC_TRANSFORMS = ("standardize", "quantile")
TIME_FEATURES = ("hour", "weekday", "recency")


@dataclass
class FeatureDecl:
    """How one side-table or context column becomes a model input."""

    kind: str = _doc(
        "'categorical' (vocabulary or hashing), 'list' (pooled embedding bag), 'numeric' "
        "or 'drop' (ignore the column).",
        "categorical",
    )
    min_count: int = _doc(
        "Values seen fewer times in training map to the unknown slot (0: features.min_count).", 0
    )
    hash_buckets: int = _doc(
        "When > 0, hash values into this many buckets instead of fitting a vocabulary "
        "(very large cardinalities).",
        0,
    )
    transform: str = _doc(
        "Numeric only: 'standardize' (mean/std of training rows) or 'quantile' (bucket "
        "edges at training quantiles, embedded like a category).",
        "standardize",
    )
    buckets: int = _doc("Numeric 'quantile' only: number of buckets.", 10)
    max_length: int = _doc(
        "List only: truncate to this many values (0: features.max_list_length).", 0
    )


@dataclass
class FeaturesSection:
    split: str = _doc(
        "'per_user_temporal' (each user's latest events are held out), 'global_time' (one "
        "cut in time) or 'random' (for comparison with published random-split results).",
        "per_user_temporal",
    )
    validation_fraction: float = _doc(
        "Fraction of events (per user, or overall for global_time/random) for validation.", 0.1
    )
    test_fraction: float = _doc("Fraction of events held out for test.", 0.2)
    validation_last_n: int = _doc(
        "per_user_temporal only: when > 0, exactly each user's last N events before test.", 0
    )
    test_last_n: int = _doc(
        "per_user_temporal only: when > 0, exactly each user's last N events are test.", 0
    )
    negative_sampler: str = _doc(
        "Negatives for positive-only sources: 'uniform' or 'popularity' (count^exponent).",
        "uniform",
    )
    negatives_per_positive: int = _doc(
        "Sampled negatives per positive, for positive-only sources.", 4
    )
    popularity_exponent: float = _doc(
        "Exponent of the popularity sampler (0 = uniform over seen items, 1 = proportional).",
        0.75,
    )
    duplicates: str = _doc(
        "Rows repeating (user_id, item_id, timestamp): 'keep', 'drop' (keep the first) or 'error'.",
        "keep",
    )
    rating_scale: list[float] = _doc(
        "[lowest, highest] valid rating; ratings outside it are an error. [] for no check.",
        factory=list,
    )
    missing_side_rows: str = _doc(
        "Ids of the impressions missing from a side table: 'error' or 'unknown' (they get "
        "unknown features).",
        "error",
    )
    min_count: int = _doc("Ids and values seen fewer times in training map to unknown.", 1)
    id_min_count: int = _doc(
        "Ids seen fewer times in training keep their side features but share the unknown "
        "id's embedding row, which so learns what a rarely seen id scores; an id first "
        "seen at query time reads that same row (1: every known id has a row of its own).",
        1,
    )
    max_list_length: int = _doc("List features (e.g. genres) are truncated to this length.", 8)
    infer: bool = _doc(
        "Infer features for undeclared columns: strings -> categorical, lists -> list, "
        "numbers -> numeric (standardised).",
        True,
    )
    user: dict[str, FeatureDecl] = _doc(
        "Declared user-table features by column name.", factory=dict
    )
    item: dict[str, FeatureDecl] = _doc(
        "Declared item-table features by column name.", factory=dict
    )
    context: dict[str, FeatureDecl] = _doc(
        "Declared context features: extra columns of the impressions table.", factory=dict
    )
    time: list[str] = _doc(
        "Time features: 'hour' and 'weekday' of the impression (UTC, context), 'recency' "
        "(log-bucketed time since the user's and the item's previous event).",
        factory=lambda: list(TIME_FEATURES),
    )
    history: bool = _doc(
        "Per-user and per-item counts and rates (impressions, clicks, click rate, purchase "
        "rate, mean rating) from events strictly earlier than each row.",
        True,
    )
    item_history: bool = _doc(
        "Item-side history and recency (the item's counts, rates and time since its "
        "previous event, as of each row). They change with time, so the item vectors of a "
        "FAISS index built once go stale, and with training.retrieval_loss_weight the "
        "in-batch negatives (other rows' items, as of other times) let the model match "
        "positives by time instead of taste: turn it off for retrieval-first models. "
        "User-side history is unaffected.",
        True,
    )
    item_popularity: bool = _doc(
        "Add the item-table feature `popularity`: the item's clicks in the training split, "
        "bucketed at the training items' quantiles (declare [features.item.popularity] to "
        "change the buckets). One value per item for training, validation, test and "
        "serving (the count at the end of the training split), so it never moves with "
        "time and a FAISS index built once stays valid; items without a training click "
        "read the lowest bucket. Each training row's own click is in its item's count, so "
        "the feature tells more in training than at serving: on MovieLens-100K it lowered "
        "held-out validation AUCs (pipelines/movielens-100k.toml says by how much).",
        False,
    )
    recent_items: int = _doc(
        "The user's last N clicked items before each row, pooled in the model (0: off).", 10
    )
    recent_ratings: int = _doc(
        "Mean of the user's last N ratings before each impression (plus one pseudo-rating "
        "at the training mean): how the user rates lately, a drift signal for the rating "
        "head. 0 turns it off.",
        0,
    )
    history_prior: float = _doc(
        "Strength (in events) of the global-mean prior that smooths history rates.", 5.0
    )
    freshness: str = _doc(
        "How fresh the deployed model's history is, one rule for training, validation, "
        "test and serving. 'snapshot' (a batch-trained bundle served as exported): "
        "validation and test rows read the state at the end of the training period, as "
        "`predict` does, and training rows see history published in blocks of "
        "`snapshot_fraction` of the user's events, so they are as stale as a served row. "
        "'online' (the state is updated as events arrive): every row sees all strictly "
        "earlier events.",
        "snapshot",
    )
    snapshot_fraction: float = _doc(
        "snapshot only: the size of a training history block as a fraction of each "
        "user's events (0: the test fraction, the staleness a served row has at most).",
        0.0,
    )
    snapshot_every: str = _doc(
        "snapshot only: publish training history in windows of this length of time "
        "instead of per-user blocks (e.g. '30d', '12h', '3600s'; '' keeps the blocks): "
        "the state is refreshed every so often, as a bundle retrained on that cadence "
        "serves. Windows end at the end of the training period; an event becomes visible "
        "when its window ends.",
        "",
    )
    shard_rows: int = _doc("Rows per output Parquet shard.", 2_000_000)
    row_group_rows: int = _doc(
        "Rows per Parquet row group in the shards: the unit that streamed training "
        "(training.in_memory_rows) shuffles and reads.",
        65_536,
    )


@dataclass
class TaskConfig:
    """A prediction task: data, not a code path (DESIGN.md, 'Tasks')."""

    kind: str = _doc("'binary' or 'regression'.", "binary")
    label: str = _doc("Label column in the impressions table.", "")
    depends_on: str = _doc(
        "A binary task whose probability multiplies this one's (entire-space funnel).", ""
    )
    head: str = _doc("'dot' (inner product, retrievable) or 'mlp'.", "mlp")
    weight: float = _doc("Static loss weight.", 1.0)
    input_from: str = _doc(
        "Another task whose representation this task's head also reads (e.g. rating reads "
        "purchase's); empty for none.",
        "",
    )


def _default_tasks() -> dict[str, TaskConfig]:
    return {
        "click": TaskConfig(kind="binary", label="click", head="dot", weight=1.0),
        "purchase": TaskConfig(kind="binary", label="purchase", depends_on="click", weight=1.0),
        "rating": TaskConfig(kind="regression", label="rating", weight=0.5),
    }


@dataclass
class ModelSection:
    sharing: str = _doc(
        "Sharing architecture: 'none' (one model per task group), 'hard' (shared bottom), "
        "'cross_stitch' or 'soft_l2' (per-task towers tied softly), 'mmoe', 'cgc', 'ple'.",
        "hard",
    )
    embedding_dim: int = _doc("Dimension of every id and side-feature embedding.", 32)
    hidden_dims: list[int] = _doc("Widths of the shared tower layers.", factory=lambda: [64])
    output_dim: int = _doc("Dimension of the exported user/item vectors (before the bias).", 32)
    static_retrieval_items: bool = _doc(
        "The retrievable (click) head scores items without their row features (item "
        "history and recency): its item vectors do not change with time, so a FAISS index "
        "built once serves exactly what training scored, and the in-batch retrieval loss "
        "cannot match positives by time. The other heads still read the item's history.",
        False,
    )
    head_hidden_dim: int = _doc("Width of the hidden layer of MLP heads.", 32)
    dropout: float = _doc("Dropout in the shared towers.", 0.0)
    id_dropout: float = _doc(
        "Training only: the probability that a row's user or item id is read as the "
        "unknown id (its side features kept), so the unknown rows learn what a user or "
        "item never seen in training should score; 0 leaves them untrained, and a cold "
        "id at query time then reads a random vector.",
        0.0,
    )
    experts: int = _doc("MMoE: number of shared experts.", 4)
    shared_experts: int = _doc("CGC/PLE: number of shared experts per level.", 2)
    task_experts: int = _doc("CGC/PLE: number of experts owned by each task group per level.", 1)
    levels: int = _doc("PLE: number of extraction levels (CGC is PLE with one).", 2)
    tie_strength: float = _doc(
        "soft_l2: penalty on the squared distance between the task towers' parameters.", 1e-2
    )
    task_groups: list[list[str]] = _doc(
        "Tasks of a group share a tower ('none', 'cross_stitch', 'soft_l2'), a gate ('mmoe') "
        "or their specific experts ('cgc', 'ple'); unlisted tasks form their own groups.",
        factory=list,
    )


@dataclass
class ObjectivesSection:
    weighting: str = _doc(
        "Loss weighting strategy (registered name): 'static', 'inverse_loss', "
        "'uncertainty', 'gradnorm', 'dwa', 'pcgrad' or 'famo'.",
        "static",
    )
    inverse_loss_alpha: float = _doc(
        "inverse_loss: w_t proportional to L_t^(-alpha); 1 equalises the weighted losses.", 1.0
    )
    gradnorm_alpha: float = _doc(
        "gradnorm: strength of the pull towards balanced training rates.", 1.5
    )
    gradnorm_lr: float = _doc("gradnorm: Adam learning rate of the task weights.", 0.025)
    dwa_temperature: float = _doc(
        "dwa: softmax temperature over the loss ratios (larger: more uniform).", 2.0
    )
    famo_lr: float = _doc("famo: Adam learning rate of the task logits.", 0.025)
    famo_decay: float = _doc("famo: weight decay of the task logits.", 1e-3)


@dataclass
class TrainingSection:
    epochs: int = _doc("Maximum number of epochs.", 20)
    batch_size: int = _doc("Rows per batch.", 1024)
    learning_rate: float = _doc("Adam learning rate.", 3e-3)
    weight_decay: float = _doc("L2 penalty on embeddings and weights (Adam weight_decay).", 1e-4)
    sparse_embedding_rows: int = _doc(
        "Embedding tables with at least this many rows get sparse gradients and a row-wise "
        "Adam (SparseAdam: only the batch's rows are updated; no weight decay, no "
        "parameter averaging for them); 0 keeps every table dense.",
        100_000,
    )
    patience: int = _doc("Stop after this many epochs without improvement on `monitor`.", 3)
    monitor: str = _doc(
        "Validation metric for early stopping and model selection, e.g. 'val/click_auc'.",
        "val/click_auc",
    )
    monitor_weights: dict[str, float] = _doc(
        "Select on a combination of validation metrics instead of one: metric -> weight, "
        "e.g. {'val/click_auc' = 1, 'val/rating_rmse' = 1}. The score, val/combined, is "
        "the weighted mean of each metric's relative gain over its first-epoch value, "
        "signed by its direction (AUC up, RMSE down); set monitor = 'val/combined'.",
        factory=dict,
    )
    progress: bool = _doc("Show a progress bar per epoch.", True)
    threads: int = _doc("torch intra-op threads; 0 keeps torch's default.", 0)
    retain_freed_memory: bool = _doc(
        "On Linux with glibc: have the C allocator keep the memory a training step frees "
        "for the next step instead of returning it to the kernel (fewer page faults; "
        "about 5 % faster first epochs at batch 1024 on 2 cores). Process-wide: the "
        "process then keeps its peak heap until it ends. No effect elsewhere.",
        True,
    )
    device: str = _doc(
        "Where training runs: 'cpu', 'cuda' (or 'cuda:N'), or 'auto' (cuda when torch "
        "sees a GPU). The bundle is saved for CPU; evaluation, the index and serving run "
        "on CPU. `recsys-mtl train/run --device` overrides it.",
        "cpu",
    )
    deduplicate_ids: bool = _doc(
        "Training on the CPU: encode each distinct user (item) of a batch once, through "
        "its embeddings and its side's sharing block, and share the result among the "
        "batch's rows of that id. Only for a side without row features (history, "
        "recency, context) and a model without dropout, where a row's encoding depends "
        "on its id alone; not for batches whose task relations are measured or "
        "weightings that read the shared representation's gradients (gradnorm, pcgrad), "
        "which are per row. The same outputs and losses; the gradients are sums in "
        "another order. Not used on a GPU (counting distinct ids waits for the device).",
        True,
    )
    precision: str = _doc(
        "Compute precision of the training step: 'float32', or 'bfloat16' (autocast: the "
        "matrix products of the towers, experts and heads in bfloat16, on CPUs with "
        "AVX-512 BF16 or AMX and on GPUs; parameters, the optimiser, the losses, "
        "validation and the exported bundle stay float32).",
        "float32",
    )
    in_memory_rows: int = _doc(
        "Training splits of up to this many rows are loaded into memory once; larger ones "
        "are streamed from their Parquet shards each epoch, a shuffled buffer of "
        "`stream_buffer_rows` at a time (bounded memory). 0 always streams.",
        5_000_000,
    )
    stream_buffer_rows: int = _doc(
        "Rows per shuffle buffer when streaming (row groups in random order, rows "
        "shuffled within the buffer); two buffers are in memory at once.",
        1_000_000,
    )
    refit: bool | str = _doc(
        "After early stopping picks the epoch count: false keeps the selected model; "
        "true (or 'validation') trains a fresh model on training + validation rows for "
        "that many epochs (under a temporal split the validation events are the most "
        "recent ones before the test period) and evaluates it; 'all' does the same, then "
        "trains one more on every split (test included) for deployment: it is the bundle "
        "in model/, the evaluated one is kept in model_evaluated/, and both are logged to "
        "MLflow (the test metrics belong to the evaluated one).",
        False,
    )
    retrieval_loss_weight: float = _doc(
        "Weight of an extra in-batch softmax loss on the retrievable (dot) head over each "
        "batch's clicked rows, with log-frequency correction; 0 turns it off. It trains the "
        "exported vectors for ranking (Recall@K) on top of the pointwise click loss.",
        0.0,
    )
    average_decay: float = _doc(
        "Keep an exponential moving average of the parameters with this decay per batch "
        "(e.g. 0.999) and validate, select and export the averaged model; 0 turns it off. "
        "The decay at step t is min(average_decay, (1 + t) / (10 + t)), so over a few "
        "thousand steps the warm-up sets it (0.9974 after 3,400 steps).",
        0.0,
    )
    log_every: int = _doc(
        "Log exponentially smoothed per-step task losses and weights (step/loss/<task>, "
        "step/weight/<task>) every this many batches; 0 turns it off.",
        50,
    )
    ranking_users: int = _doc(
        "Validation users whose full ranking of the catalogue is scored every epoch "
        "(val/recall@k, val/ndcg@k, val/hitrate@k at evaluation.k; a seeded sample when "
        "there are more); 0 turns the ranking probe off.",
        1000,
    )
    relation_every: int = _doc(
        "Measure the task relation matrix (cosine of task gradients on the shared embeddings) "
        "every this many batches; 0 turns it off.",
        25,
    )

    @property
    def refits(self) -> bool:
        """Whether the evaluated model is retrained on training + validation rows."""
        return self.refit is not False

    @property
    def deploys_on_all(self) -> bool:
        """Whether a model retrained on every split (test included) is the one shipped."""
        return self.refit == "all"


@dataclass
class EvaluationSection:
    k: list[int] = _doc("Cut-offs for the ranking metrics.", factory=lambda: [10, 20])
    curve_k: list[int] = _doc(
        "Cut-offs of the Recall/NDCG-versus-K plot (ranked as deep as the largest).",
        factory=lambda: [1, 5, 10, 20, 50, 100],
    )
    baselines: list[str] = _doc(
        "Baselines evaluated in the same run on the same split: 'popularity', "
        "'global_mean', 'user_mean', 'item_mean' (rating) and 'single_task' (one model per "
        "task, trained like the model with sharing = 'none' and no task dependencies).",
        factory=lambda: ["popularity", "global_mean", "user_mean", "item_mean", "single_task"],
    )
    bootstrap: int = _doc(
        "Bootstrap resamples of the test users for the confidence intervals (0: none).", 200
    )
    confidence: float = _doc("Level of the bootstrap intervals.", 0.95)
    cold_user_events: int = _doc(
        "Users with at most this many interactions before the test form the 'cold' "
        "segment; the rest are 'active'.",
        10,
    )


DEFAULT_FUSION = {"click": 1.0, "purchase": 1.0, "rating": 0.0}


@dataclass
class RetrievalSection:
    index: str = _doc(
        "FAISS index factory string: 'Flat' (exact), 'HNSW32', 'IVF1024,Flat', "
        "'IVF1024,SQ8', 'IVF1024,PQ16'; 'auto' is exact up to 100k items, else 8-bit IVF with "
        "~4 sqrt(N) lists.",
        "auto",
    )
    nprobe: int = _doc(
        "IVF lists searched per query; 0 tunes it to target_recall when the index is built.", 0
    )
    ef_search: int = _doc(
        "HNSW search breadth (efSearch); 0 tunes it to target_recall when the index is built.",
        0,
    )
    target_recall: float = _doc(
        "Recall@quality_k against exact search that tuning nprobe / efSearch aims for.", 0.95
    )
    quality_k: int = _doc("K of the index quality report's recall@K.", 100)
    quality_queries: int = _doc(
        "User vectors the index quality report measures recall and speed with.", 2000
    )
    candidates: int = _doc("Candidates fetched from the index before re-ranking by all heads.", 100)
    fusion: dict[str, float] = _doc(
        "Weights of the heads in the fused score (0 drops a head); requests may change them.",
        factory=lambda: dict(DEFAULT_FUSION),
    )
    fusion_mode: str = _doc(
        "'product': p_click^a * p_purchase^b * (rating/5)^c; 'sum': a p_click + b p_purchase "
        "+ c rating/5.",
        "product",
    )
    regression_max: float = _doc(
        "Regression predictions are divided by this in the fused score (rating/5).", 5.0
    )
    sample_users: int = _doc("How many sample retrieval queries the pipeline prints.", 3)


@dataclass
class TrackingSection:
    experiment: str = _doc("MLflow experiment name.", "recsys-mtl")
    uri: str = _doc(
        "MLflow tracking URI; empty means $MLFLOW_TRACKING_URI, else sqlite:///mlflow/mlflow.db.",
        "",
    )
    enabled: bool = _doc("Log to MLflow at all.", True)
    log_model: bool = _doc("Log the recommender as an MLflow pyfunc model.", True)
    registered_model: str = _doc(
        "Register the logged model under this name in the MLflow model registry; empty "
        "registers nothing.",
        "",
    )
    system_metrics: bool = _doc(
        "Log MLflow's system metrics (system/cpu_utilization_percentage, memory, disk, "
        "network; GPU utilisation and memory where nvidia-ml-py is installed) for the "
        "pipeline's run.",
        True,
    )
    system_metrics_interval: float = _doc("Seconds between two system-metric samples.", 10.0)


@dataclass
class PipelineConfig:
    pipeline: PipelineSection = _doc("Name, output folder, seed.", factory=PipelineSection)
    source: SourceSection = _doc("Where the data comes from.", factory=SourceSection)
    features: FeaturesSection = _doc("Feature pipeline.", factory=FeaturesSection)
    tasks: dict[str, TaskConfig] = _doc("Tasks by name.", factory=_default_tasks)
    model: ModelSection = _doc("Architecture.", factory=ModelSection)
    objectives: ObjectivesSection = _doc("Loss weighting.", factory=ObjectivesSection)
    training: TrainingSection = _doc("Trainer.", factory=TrainingSection)
    evaluation: EvaluationSection = _doc("Offline evaluation.", factory=EvaluationSection)
    retrieval: RetrievalSection = _doc("Index and re-ranking.", factory=RetrievalSection)
    tracking: TrackingSection = _doc("MLflow.", factory=TrackingSection)

    @property
    def output_path(self) -> Path:
        return Path(self.pipeline.output_dir)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def flat_params(self) -> dict[str, str]:
        """Dotted key -> value strings, for logging as MLflow params."""
        out: dict[str, str] = {}

        def walk(prefix: str, value: Any) -> None:
            if isinstance(value, dict):
                for k, v in value.items():
                    walk(f"{prefix}.{k}" if prefix else str(k), v)
            else:
                out[prefix] = str(value)

        walk("", self.to_dict())
        return out


# ---------------------------------------------------------------------------- loading


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, where: str) -> Any:
    """Check `value` against the annotation `tp`, building nested dataclasses."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise RecsysError(
                f"'{where}' must be a table of settings, got {value!r}",
                fix=f"write it as a [{where}] section",
            )
        return _build(tp, value, where)
    if origin is dict:
        _, val_tp = typing.get_args(tp)
        if not isinstance(value, dict):
            raise RecsysError(f"'{where}' must be a table, got {value!r}", fix="use {key = value}")
        return {str(k): _convert(v, val_tp, f"{where}.{k}") for k, v in value.items()}
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise RecsysError(
                f"'{where}' must be a list, got {value!r}", fix=f"write it as [{value!r}]"
            )
        return [_convert(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin in (types.UnionType, typing.Union):
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is bool and not isinstance(value, bool):
        raise RecsysError(
            f"'{where}' must be true or false, got {value!r}", fix="write true or false"
        )
    if tp in (int, float, str) and (
        not isinstance(value, tp) or (isinstance(value, bool) and tp is not bool)
    ):
        raise RecsysError(
            f"'{where}' must be {_type_name(tp)}, got {type(value).__name__} {value!r}",
            fix=f"give {_article(_type_name(tp))} {_type_name(tp)} value",
        )
    return value


def _build(cls: Any, data: dict[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(names)}"
            raise RecsysError(
                f"unknown setting '{key}'",
                where=f"[{where}]" if where else "the top level",
                fix=hint,
            )
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        sub = f"{where}.{f.name}" if where else f.name
        if f.name == "tasks" and cls is PipelineConfig:
            kwargs[f.name] = _build_tasks(data[f.name])
        else:
            kwargs[f.name] = _convert(data[f.name], hints[f.name], sub)
    return cls(**kwargs)


def _build_tasks(data: Any) -> dict[str, TaskConfig]:
    """Tasks merge over the defaults: `[tasks.rating] weight = 1.0` keeps click and purchase."""
    if not isinstance(data, dict):
        raise RecsysError("'tasks' must be a table of tasks", fix="write [tasks.NAME] sections")
    tasks = _default_tasks()
    for name, spec in data.items():
        if spec is False or spec == {"enabled": False}:
            tasks.pop(name, None)
            continue
        base = dataclasses.asdict(tasks[name]) if name in tasks else {}
        if not isinstance(spec, dict):
            raise RecsysError(f"'tasks.{name}' must be a table", fix=f"write [tasks.{name}]")
        base.update(spec)
        base.setdefault("label", name)
        tasks[name] = _build(TaskConfig, base, f"tasks.{name}")
    return tasks


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise RecsysError(
            f"--set '{text}' has no '='",
            fix="write --set section.key=value, e.g. training.epochs=5",
        )
    key, raw = text.split("=", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # a bare string such as demo or Flat
    return key.strip().split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise RecsysError(f"--set '{text}': '{part}' is not a section", fix="check the key")
        node[path[-1]] = value
    return data


def load_config(path: str | Path, overrides: list[str] | None = None) -> PipelineConfig:
    """Read a pipeline TOML file, apply `--set` overrides and validate everything."""
    path = Path(path)
    if not path.is_file():
        raise RecsysError(
            f"pipeline file '{path}' does not exist",
            fix="pass a TOML file such as pipelines/demo.toml",
        )
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise RecsysError(f"'{path}' is not valid TOML: {exc}", fix="correct the syntax") from None
    return config_from_dict(apply_overrides(data, overrides or []), where=str(path))


def config_from_dict(data: dict[str, Any], where: str = "config") -> PipelineConfig:
    try:
        config = _build(PipelineConfig, data, "")
    except RecsysError as exc:
        exc.where = f"{where}, {exc.where}" if exc.where else where
        raise
    validate(config)
    return config


def validate(config: PipelineConfig) -> None:
    """Cross-field checks that types alone cannot express."""
    f = config.features
    if not (0 <= f.validation_fraction < 1 and 0 < f.test_fraction < 1):
        raise RecsysError(
            "features.validation_fraction and features.test_fraction must lie in [0, 1)",
            fix="use e.g. validation_fraction = 0.1, test_fraction = 0.2",
        )
    if f.validation_fraction + f.test_fraction >= 0.9:
        raise RecsysError(
            "validation_fraction + test_fraction leaves almost nothing to train on",
            fix="keep their sum below 0.9",
        )
    _validate_features(f)
    if config.source.kind not in ("synthetic", "movielens", "impressions"):
        close = difflib.get_close_matches(
            config.source.kind, ["synthetic", "movielens", "impressions"], n=1
        )
        raise RecsysError(
            f"unknown source.kind '{config.source.kind}'",
            fix=f"did you mean '{close[0]}'?"
            if close
            else "use synthetic, movielens or impressions",
        )
    for name, task in config.tasks.items():
        if task.kind not in ("binary", "regression"):
            raise RecsysError(
                f"task '{name}' has kind '{task.kind}'", fix="use 'binary' or 'regression'"
            )
        if task.depends_on and task.depends_on not in config.tasks:
            raise RecsysError(
                f"task '{name}' depends on unknown task '{task.depends_on}'",
                fix=f"use one of {sorted(config.tasks)}",
            )
    for name, task in config.tasks.items():
        if not task.depends_on:
            continue
        parent = config.tasks[task.depends_on]
        if task.kind != "binary" or parent.kind != "binary":
            raise RecsysError(
                f"task '{name}' ({task.kind}) depends on '{task.depends_on}' ({parent.kind}); "
                "a dependency multiplies two probabilities, so both must be binary",
                fix=f"remove depends_on from task '{name}' or depend on a binary task",
            )
        chain = [name]
        while parent_name := config.tasks[chain[-1]].depends_on:
            if parent_name in chain:
                raise RecsysError(
                    f"tasks depend on each other in a cycle: {' -> '.join([*chain, parent_name])}",
                    fix="make the dependencies a tree, e.g. purchase depends_on click",
                )
            chain.append(parent_name)
    for name, task in config.tasks.items():
        if task.input_from and (task.input_from not in config.tasks or task.input_from == name):
            raise RecsysError(
                f"task '{name}' reads input_from unknown task '{task.input_from}'",
                fix=f"use another task's name from {sorted(config.tasks)}, or remove input_from",
            )
    _validate_model(config.model, config.tasks)
    dot_heads = [n for n, t in config.tasks.items() if t.head == "dot"]
    if len(dot_heads) != 1 or config.tasks[dot_heads[0]].kind != "binary":
        raise RecsysError(
            "exactly one binary task must use head = 'dot' (the retrievable click score)",
            fix="set head = 'dot' on the click task only",
        )
    if config.tasks[dot_heads[0]].input_from:
        raise RecsysError(
            f"the retrievable task '{dot_heads[0]}' cannot read input_from another task",
            fix=f"remove input_from from task '{dot_heads[0]}'",
        )
    _require_positive(
        [
            ("training.epochs", config.training.epochs),
            ("training.batch_size", config.training.batch_size),
            ("retrieval.candidates", config.retrieval.candidates),
            ("model.embedding_dim", config.model.embedding_dim),
            ("model.output_dim", config.model.output_dim),
        ]
    )
    _validate_evaluation(config.evaluation)
    _validate_retrieval(config.retrieval, config.tasks)
    _one_of("training.precision", config.training.precision, ("float32", "bfloat16"))
    if not config.tracking.system_metrics_interval > 0:
        raise RecsysError(
            "tracking.system_metrics_interval must be positive, got "
            f"{config.tracking.system_metrics_interval}",
            fix="use e.g. 10 (seconds), or system_metrics = false to log none",
        )
    if not 0.0 <= config.model.id_dropout < 1.0:
        raise RecsysError(
            f"model.id_dropout must lie in [0, 1), got {config.model.id_dropout}",
            fix="use e.g. 0.05, or 0 to leave the unknown id rows untrained",
        )
    if not 0.0 <= config.training.average_decay < 1.0:
        raise RecsysError(
            f"training.average_decay must lie in [0, 1), got {config.training.average_decay}",
            fix="use e.g. 0.999, or 0 to turn parameter averaging off",
        )
    training, objectives = config.training, config.objectives
    if training.monitor == "val/combined" and not training.monitor_weights:
        raise RecsysError(
            "training.monitor = 'val/combined' needs training.monitor_weights",
            fix="set e.g. monitor_weights = {'val/click_auc' = 1, 'val/rating_rmse' = 1}",
        )
    for metric, weight in training.monitor_weights.items():
        if not metric.startswith("val/") or not weight > 0:
            raise RecsysError(
                f"training.monitor_weights entry '{metric}' = {weight} is invalid",
                fix="use validation metric names (val/...) with positive weights",
            )
    for name in ("inverse_loss_alpha", "gradnorm_alpha", "famo_decay"):
        if getattr(objectives, name) < 0:
            raise RecsysError(
                f"objectives.{name} must be >= 0, got {getattr(objectives, name)}",
                fix=f"set objectives.{name} to 0 or more",
            )
    for name in ("gradnorm_lr", "famo_lr", "dwa_temperature"):
        if not getattr(objectives, name) > 0:
            raise RecsysError(
                f"objectives.{name} must be positive, got {getattr(objectives, name)}",
                fix=f"set objectives.{name} above 0",
            )
    if config.training.refit not in (False, True, "validation", "all"):
        raise RecsysError(
            f"unknown training.refit {config.training.refit!r}",
            fix="use false, true (= 'validation') or 'all'",
        )
    if config.training.ranking_users < 0:
        raise RecsysError(
            f"training.ranking_users must be >= 0, got {config.training.ranking_users}",
            fix="use e.g. 1000, or 0 to turn the validation ranking probe off",
        )
    if config.training.in_memory_rows < 0:
        raise RecsysError(
            f"training.in_memory_rows must be >= 0, got {config.training.in_memory_rows}",
            fix="use e.g. 5000000, or 0 to always stream the training rows",
        )
    _require_positive([("training.stream_buffer_rows", config.training.stream_buffer_rows)])
    check_device(config.training.device)


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def check_device(device: str) -> None:
    """'cpu', 'cuda', 'cuda:N' or 'auto'; anything else is a clear error."""
    kind, _, index = device.partition(":")
    if kind not in ("cpu", "cuda", "auto") or (index and (kind != "cuda" or not index.isdigit())):
        raise RecsysError(
            f"unknown training.device '{device}'",
            fix="use 'cpu', 'cuda', 'cuda:0' (a GPU's index) or 'auto'",
        )


def _validate_retrieval(r: RetrievalSection, tasks: dict[str, TaskConfig]) -> None:
    from recsys_mtl.retrieval.fusion import check_fusion

    kinds = {name: task.kind for name, task in tasks.items()}
    if r.fusion == DEFAULT_FUSION:  # the default names the default tasks: keep those there
        r.fusion = {name: w for name, w in DEFAULT_FUSION.items() if name in tasks}
    check_fusion(r.fusion, r.fusion_mode, kinds, where="retrieval.fusion")
    for name in ("nprobe", "ef_search"):
        if getattr(r, name) < 0:
            raise RecsysError(
                f"retrieval.{name} must be >= 0, got {getattr(r, name)}",
                fix=f"set retrieval.{name} to a positive number, or 0 to tune it",
            )
    factory = r.index.strip().upper()
    if r.nprobe and not factory.startswith("IVF") and factory != "AUTO":
        raise RecsysError(
            f"retrieval.nprobe applies to IVF indexes, not to '{r.index}'",
            fix="remove nprobe, or use an index like 'IVF1024,Flat'",
        )
    if r.ef_search and not factory.startswith("HNSW"):
        raise RecsysError(
            f"retrieval.ef_search applies to HNSW indexes, not to '{r.index}'",
            fix="remove ef_search, or use an index like 'HNSW32'",
        )
    if not 0 < r.target_recall <= 1:
        raise RecsysError(
            f"retrieval.target_recall must lie in (0, 1], got {r.target_recall}",
            fix="use e.g. 0.95",
        )
    if not r.regression_max > 0:
        raise RecsysError(
            f"retrieval.regression_max must be positive, got {r.regression_max}",
            fix="set it to the top of the rating scale, e.g. 5",
        )
    _require_positive(
        [("retrieval.quality_k", r.quality_k), ("retrieval.quality_queries", r.quality_queries)]
    )


def _validate_evaluation(e: EvaluationSection) -> None:
    from recsys_mtl.evaluation.baseline_names import BASELINES

    if not e.k or any(k <= 0 for k in [*e.k, *e.curve_k]):
        raise RecsysError(
            "evaluation.k and evaluation.curve_k values must be positive",
            fix="use e.g. k = [10, 20] and curve_k = [1, 5, 10, 20, 50, 100]",
        )
    unknown = sorted(set(e.baselines) - set(BASELINES))
    if unknown:
        raise RecsysError(
            f"evaluation.baselines has unknown entries {unknown}",
            fix=f"choose from {list(BASELINES)}",
        )
    if e.bootstrap < 0 or e.cold_user_events < 0:
        raise RecsysError(
            "evaluation.bootstrap and evaluation.cold_user_events must be >= 0",
            fix="use e.g. bootstrap = 200 (0 turns the intervals off)",
        )
    if not 0.0 < e.confidence < 1.0:
        raise RecsysError(
            f"evaluation.confidence = {e.confidence} is not a level in (0, 1)",
            fix="use e.g. confidence = 0.95",
        )


def _require_positive(settings: list[tuple[str, int]]) -> None:
    for setting, number in settings:
        if number <= 0:
            raise RecsysError(
                f"{setting} must be positive, got {number}", fix=f"set {setting} >= 1"
            )


def _validate_model(m: ModelSection, tasks: dict[str, TaskConfig]) -> None:
    _require_positive(
        [
            ("model.experts", m.experts),
            ("model.levels", m.levels),
            ("model.task_experts", m.task_experts),
        ]
    )
    if m.shared_experts < 0 or m.tie_strength < 0:
        raise RecsysError(
            "model.shared_experts and model.tie_strength must be >= 0",
            fix="use e.g. shared_experts = 2, tie_strength = 0.01",
        )
    seen: dict[str, int] = {}
    for number, group in enumerate(m.task_groups):
        for name in group:
            if name not in tasks:
                raise RecsysError(
                    f"model.task_groups[{number}] names unknown task '{name}'",
                    fix=f"use task names from {sorted(tasks)}",
                )
            if name in seen:
                raise RecsysError(
                    f"task '{name}' is in model.task_groups[{seen[name]}] and [{number}]",
                    fix="put every task in at most one group",
                )
            seen[name] = number


def _one_of(setting: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        close = difflib.get_close_matches(value, allowed, n=1)
        raise RecsysError(
            f"unknown {setting} '{value}'",
            fix=f"did you mean '{close[0]}'?" if close else f"use one of {', '.join(allowed)}",
        )


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def snapshot_seconds(every: str) -> int:
    """features.snapshot_every in seconds ('' -> 0: per-user blocks)."""
    text = every.strip()
    if not text:
        return 0
    number, unit = text[:-1], text[-1]
    if unit not in _UNITS or not number.replace(".", "", 1).isdigit() or float(number) <= 0:
        raise RecsysError(
            f"features.snapshot_every must be a positive length of time, got {every!r}",
            where="[features]",
            fix="write e.g. snapshot_every = '30d' (units s, m, h, d, w), or '' for blocks",
        )
    return max(1, round(float(number) * _UNITS[unit]))


def _validate_features(f: FeaturesSection) -> None:
    _one_of("features.split", f.split, ("per_user_temporal", "global_time", "random"))
    _one_of("features.negative_sampler", f.negative_sampler, ("uniform", "popularity"))
    _one_of("features.duplicates", f.duplicates, ("keep", "drop", "error"))
    _one_of("features.freshness", f.freshness, ("snapshot", "online"))
    if not 0 <= f.snapshot_fraction < 1:
        raise RecsysError(
            f"features.snapshot_fraction must lie in [0, 1), got {f.snapshot_fraction}",
            where="[features]",
            fix="use e.g. snapshot_fraction = 0.2, or 0 for the test fraction",
        )
    snapshot_seconds(f.snapshot_every)
    _one_of("features.missing_side_rows", f.missing_side_rows, ("error", "unknown"))
    if f.split != "per_user_temporal" and (f.validation_last_n or f.test_last_n):
        raise RecsysError(
            f"validation_last_n/test_last_n apply to the per_user_temporal split, not '{f.split}'",
            fix="remove them or use split = 'per_user_temporal'",
        )
    if f.rating_scale and (len(f.rating_scale) != 2 or f.rating_scale[0] >= f.rating_scale[1]):
        raise RecsysError(
            f"features.rating_scale must be [lowest, highest], got {f.rating_scale}",
            fix="write e.g. rating_scale = [1, 5], or [] for no check",
        )
    for name in f.time:
        _one_of("features.time entry", name, TIME_FEATURES)
    for setting, value in [
        ("features.negatives_per_positive", f.negatives_per_positive),
        ("features.recent_items", f.recent_items),
        ("features.recent_ratings", f.recent_ratings),
        ("features.validation_last_n", f.validation_last_n),
        ("features.test_last_n", f.test_last_n),
    ]:
        if value < 0:
            raise RecsysError(f"{setting} must be >= 0, got {value}", fix=f"set {setting} >= 0")
    _require_positive(
        [
            ("features.shard_rows", f.shard_rows),
            ("features.row_group_rows", f.row_group_rows),
            ("features.min_count", f.min_count),
            ("features.id_min_count", f.id_min_count),
            ("features.max_list_length", f.max_list_length),
        ]
    )
    if f.popularity_exponent < 0 or f.history_prior < 0:
        raise RecsysError(
            "features.popularity_exponent and features.history_prior must be >= 0",
            fix="use e.g. popularity_exponent = 0.75, history_prior = 5",
        )
    for side in ("user", "item", "context"):
        for name, decl in getattr(f, side).items():
            where = f"features.{side}.{name}"
            _one_of(f"{where}.kind", decl.kind, FEATURE_KINDS)
            _one_of(f"{where}.transform", decl.transform, NUMERIC_TRANSFORMS)
            if decl.kind == "numeric" and decl.transform == "quantile" and decl.buckets < 2:
                raise RecsysError(f"{where}.buckets must be >= 2", fix="use e.g. buckets = 10")
            if decl.hash_buckets < 0 or decl.min_count < 0 or decl.max_length < 0:
                raise RecsysError(
                    f"{where}: hash_buckets, min_count and max_length must be >= 0",
                    fix="use 0 for the defaults",
                )
