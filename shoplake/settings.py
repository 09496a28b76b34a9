"""The one place where shoplake's environment is resolved.

Every path, table location and tunable comes from here; nothing else reads environment variables. Local defaults
need no configuration; production sets ``SHOPLAKE_*`` variables (or a ``.env`` file). Secrets (object-store keys,
database passwords) are never written in code: they come from the environment, as ``SHOPLAKE_STORAGE_OPTIONS`` for
delta-rs or the connection strings that later stages read.
"""

from __future__ import annotations

import datetime as dt
import functools
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_EVENT_WEIGHTS = {"view": 1.0, "cart": 3.0, "purchase": 5.0, "remove_from_cart": -1.0}


def is_remote_uri(uri: str) -> bool:
    """True for object-store URIs (s3://, abfss://, gs://...) that are passed through to delta-rs untouched."""
    return "://" in uri and not uri.startswith("file://")


class Settings(BaseSettings):
    """shoplake's configuration; each field is overridable as ``SHOPLAKE_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="SHOPLAKE_", env_file=".env", extra="ignore")

    home: Path = Field(Path(".shoplake"), description="Root of everything shoplake writes locally.")
    lake_uri: str | None = Field(None, description="Lake root; default $SHOPLAKE_HOME/lake. s3:// etc. allowed.")
    storage_options: dict[str, str] = Field(
        default_factory=dict, description="delta-rs storage options (credentials come from the environment)."
    )

    spark_master: str = Field("local[2]", description="local[N], spark://, k8s:// or Spark Connect sc://.")
    spark_conf: dict[str, str] = Field(default_factory=dict, description="Extra Spark conf, as a JSON object.")
    spark_driver_memory: str = "4g"
    spark_shuffle_partitions: int = Field(16, ge=1, description="Adaptive execution merges small ones.")
    spark_ui: bool = Field(True, description="Spark's web UI; tests turn it off.")

    feast_env: Literal["local", "production"] = "local"
    feast_registry_url: str = Field(
        "postgresql+psycopg://postgres@127.0.0.1:5432/postgres", description="production: Feast's SQL registry."
    )
    feast_redis: str = Field("127.0.0.1:6379", description="production: Feast's Redis online store.")

    landing: Path | None = Field(None, description="Folder the daily DAG ingests from; default $SHOPLAKE_HOME/landing.")
    daily_schedule: str = Field("@daily", description="Cron or preset of shoplake_daily; 'none': manual runs only.")
    spark_submit: bool = Field(
        False, description="Airflow runs silver and gold through spark-submit against spark_master, not in-process."
    )

    model_path: Path | None = Field(None, description="Local Hugging Face encoder dir; default all-MiniLM-L6-v2.")
    device: Literal["auto", "cuda", "cpu"] = "auto"
    embed_batch_tokens: int = Field(131_072, ge=512, description="Token budget of one GPU batch.")
    embed_cpu_batch_size: int = Field(64, ge=1, description="Rows of one CPU batch (length-sorted).")
    embed_tokenizer_processes: int | None = Field(
        None, ge=0, description="Processes tokenising for the GPU; default half the cores (0 = in-process)."
    )
    embed_compile_min_items: int = Field(
        50_000, ge=1, description="On CPU, torch.compile the model for runs this large (compiling takes ~20 s)."
    )
    embed_on: Literal["driver", "executors"] = Field(
        "driver", description="driver: one process (the GPU task); executors: one model per Spark executor."
    )

    # knowledge graph
    kg_similar_top_k: int = Field(20, gt=0, description="SIMILAR_TO neighbours kept per item.")
    kg_min_similarity: float = Field(0.5, ge=-1, le=1, description="SIMILAR_TO needs at least this cosine.")
    kg_block_mb: int = Field(512, gt=0, description="Memory for one block of scores in the exact top-K search.")
    kg_behaviour_min_support: int = Field(2, ge=1, description="Sessions that must show a behaviour edge.")
    kg_behaviour_top_k: int = Field(20, gt=0, description="Behaviour edges kept per item and relation.")
    concept_threshold: float = Field(0.30, ge=-1, le=1, description="HAS_CONCEPT needs at least this cosine.")
    concept_max_per_item: int = Field(3, gt=0)

    event_weights: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_EVENT_WEIGHTS))
    half_life_days: float = Field(14.0, gt=0, description="Implicit-score decay: weight halves every this many days.")

    # silver rules
    future_tolerance_hours: float = Field(1.0, ge=0, description="Events later than ingestion + this: quarantined.")
    earliest_event_date: dt.date = Field(
        dt.date(2000, 1, 1), description="Events before this date: quarantined (1970-01-01 is a common 'no time')."
    )
    repeat_window_seconds: float = Field(2.0, ge=0, description="Same user, item, type this close: one action.")
    session_gap_minutes: float = Field(30.0, gt=0, description="Inactivity that ends a session lacking an id.")
    bot_window_seconds: int = Field(300, gt=0, description="Window over which a bot's sustained rate is measured.")
    bot_max_events_per_window: int = Field(150, gt=0, description="More events than this in one window: a bot.")

    quality_max_quarantine_share: float = Field(
        0.05, ge=0, le=1, description="Silver's gate fails when more of a run's bronze rows are quarantined."
    )

    quality_max_training_null_rate: float = Field(
        0.5, ge=0, le=1, description="A training set's gate fails when a feature column is null more often."
    )

    # gold features
    history_days: int = Field(90, gt=0, description="How far back gold features look from the run date.")
    similarity_top_k: int = Field(50, gt=0, description="Neighbours kept per item.")
    similarity_basket_items: int = Field(20, gt=1, description="Most recent distinct items per session/user basket.")
    similarity_popularity_damping: float = Field(
        0.5, ge=0, le=1, description="0.5 = cosine; higher damps popular neighbours."
    )
    similarity_min_support: int = Field(1, ge=1, description="Baskets that must hold both items.")
    cf_top_n: int = Field(20, gt=0, description="Recommendations kept per user.")
    cf_user_items: int = Field(50, gt=0, description="A user's highest-scored items used to score candidates.")
    cf_max_contributions: int = Field(
        50, gt=0, description="Items j add to the scores of at most this many items i that list j (the closest)."
    )
    recommend_candidates: int = Field(200, gt=0, description="Candidates the online recommender scores exactly.")
    recommend_embedding_weight: float = Field(
        0.3, ge=0, le=1, description="β in (1 − β)·CF + β·cosine(item, user profile)."
    )
    popular_items_kept: int = Field(100, gt=0, description="Popular items kept per category for cold starts.")
    label_window_hours: float = Field(24.0, gt=0, description="Training labels: a purchase this soon after a view.")
    rate_prior_strength: float = Field(20.0, ge=0, description="Pseudo-views behind smoothed conversion rates.")

    @field_validator("home")
    @classmethod
    def _absolute_home(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @property
    def lake_root(self) -> str:
        if self.lake_uri:
            return self.lake_uri if is_remote_uri(self.lake_uri) else str(Path(self.lake_uri).expanduser().resolve())
        return str(self.home / "lake")

    @property
    def daily_schedule_or_none(self) -> str | None:
        return None if self.daily_schedule.strip().lower() in ("", "none") else self.daily_schedule

    @property
    def landing_dir(self) -> Path:
        return self.landing.expanduser().resolve() if self.landing else self.home / "landing"

    @property
    def reports_dir(self) -> Path:
        return self.home / "reports"

    @property
    def staging_root(self) -> str:
        """Where Spark writes files before they are committed; inside the lake so executors and driver share it."""
        return f"{self.lake_root.rstrip('/')}/_staging"

    def table_uri(self, table_name: str) -> str:
        return f"{self.lake_root.rstrip('/')}/{table_name}"


@functools.cache
def get_settings() -> Settings:
    """The process-wide settings; tests call ``get_settings.cache_clear()`` after changing the environment."""
    return Settings()
