"""One settings object for every service. Environment variables use the IMPROBABLE_ prefix."""

from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, EnvSettingsSource, NoDecode, SettingsConfigDict

from core.contracts import Liveness
from core.shards import Shards
from core.text import HARD_MAX_BYTES as HARD_MAX_UPLOAD_BYTES

SECRETS_DIR = Path("/run/secrets")  # Docker/Compose secrets; a file named like the setting is read


def default_data_dir() -> Path:
    """Where the embedded defaults keep their SQLite file, storage and runs (XDG data dir)."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "improbable"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="IMPROBABLE_", env_file=".env", extra="ignore",
                                      env_ignore_empty=True,  # `IMPROBABLE_X=` (empty) means the default
                                      secrets_dir=SECRETS_DIR if SECRETS_DIR.is_dir() else None)

    data_dir: Path = Field(default_factory=default_data_dir, description="Local state: SQLite, storage, runs.")
    corpus_path: str = Field("", description="Folders searched for corpora by name, separated by ':'; empty: "
                             "data_dir/corpora, plus ../shared/corpora beside a checkout.")
    database_url: str = Field("", description="SQLAlchemy URL; empty means a SQLite file in data_dir.")
    storage_url: str = Field("", description="fsspec URL for blobs; empty means data_dir/storage.")
    broker_url: str = Field("", description="Celery broker (Redis); empty means tasks run in-process.")
    result_backend: str = Field("", description="Celery result backend; defaults to the broker URL.")
    # workers (worker/)
    visibility_timeout: int = Field(7200, description="Seconds before Redis redelivers an unacknowledged job "
                                    "(after a worker died); keep it above the longest job.")
    broker_connect_timeout: float = Field(3.0, description="Seconds to reach the broker before failing.")
    device: str = Field("auto", description="Generation device: auto (CUDA when present), cpu, cuda, cuda:N.")
    worker_kind: Literal["auto", "gpu", "cpu"] = Field(
        "auto", description="A generate worker's kind: beside `generate` it consumes `generate.<kind>`; auto = gpu "
        "when its device is CUDA (IMPROBABLE_DEVICE, or a CUDA device present), else cpu.")
    generate_queue: Literal["generate", "generate.gpu", "generate.cpu"] = Field(
        "generate", description="Where generate jobs and scheduled posts are sent: generate (any generate worker), "
        "generate.gpu or generate.cpu (only workers of that kind). Set it alike for the bot, beat and workers.")
    torch_threads: int = Field(0, description="Intra-op threads for generation and training; 0 = automatic "
                             "(generation: half the cores, at most 4; training: PyTorch's default).")
    model_cache_mb: int = Field(2048, description="Memory cap for checkpoints kept loaded by a worker (least "
                                "recently used evicted first; a 2x512 char LSTM holds 13.5 MB in fp32).")
    generate_precision: Literal["fp32", "bf16"] = Field("fp32", description="Weights of served models: fp32, "
                                                        "or bf16 (faster batched steps; other text per seed).")
    generate_timeout: float = Field(120.0, description="Seconds a generate job may take before it fails (and its "
                                    "worker stops computing it).")
    max_generate_tokens: int = Field(2000, description="Upper bound on max_tokens of one generate job.")
    partial_interval: float = Field(0.5, description="Seconds between partial-text updates of a generate job.")
    generate_lease_seconds: float = Field(10.0, gt=0, description="Seconds without a heartbeat after which a "
                                          "generate worker is taken to be dead and its jobs are re-published "
                                          "(worker/leases.py).")
    generate_max_streams: int = Field(1024, ge=1, description="Generate jobs one worker process holds in its "
                                      "engine at once (more wait in the queue for any worker); not a cap on "
                                      "the batch below it.")
    generate_engine: Literal["thread", "process"] = Field(
        "process", description="Where a generate worker's engine steps: a process of its own (no GIL shared with "
        "the worker's other threads: more of the engine's throughput reaches the queue under load, "
        "docs/benchmarks.md), or a thread of the worker's process. The bot's own process (no broker) always "
        "uses a thread.")
    generate_int8: Literal["auto", "on", "off"] = Field(
        "auto", description="Step a batch of one stream with int8 weights (fp32 LSTM char models on CPU, "
        "trainer/quantize.py): auto = where it measures faster when the model is first served, on = wherever "
        "it applies, off = never. A seed's text then differs between a stream served alone and in a batch.")
    train_report_seconds: float = Field(3.0, description="Seconds between progress writes of a training run.")
    train_lease_seconds: float = Field(120.0, description="A running run whose progress is older than this is "
                                       "taken to be orphaned (its trainer died) and is resumed.")
    train_max_minutes: float = Field(120.0, description="Upper bound on a training run's time budget.")
    train_min_distinct_bytes: int = Field(5000, ge=0, description="Least distinct text (UTF-8 bytes once repeated "
                                          "paragraphs and lines are dropped) an upload or a run's corpus needs to "
                                          "be trained on; less is refused before training, with the numbers.")
    train_queued_per_server: int = Field(3, ge=1, description="Most training runs one server may have waiting "
                                         "for a trainer (the deployment's operator is not limited).")
    discord_token: str = Field("", validation_alias=AliasChoices("IMPROBABLE_DISCORD_TOKEN", "DISCORD_TOKEN"),
                               description="Bot token; scheduled posts use it for the REST API.")
    discord_api_base: str = Field("https://discord.com/api/v10",
                                  validation_alias=AliasChoices("IMPROBABLE_DISCORD_API_BASE", "DISCORD_API_BASE"),
                                  description="Discord REST base URL (a local fake in tests).")
    discord_rest_rate: float = Field(40.0, ge=0, description="Requests a second to Discord's REST API that the "
                                     "whole deployment (bot and workers, through the broker's Redis) may send; "
                                     "rate + burst stays under Discord's 50 in any second (core/ratelimit.py). "
                                     "0 = no bucket (429s are still honoured).")
    discord_rest_burst: int = Field(5, ge=1, description="Requests that may go at once above the REST rate "
                                    "after a quiet moment.")
    discord_rest_fallback_share: float = Field(0.25, gt=0, le=1, description="Share of the REST rate and burst "
                                               "each process keeps to itself while the broker's Redis is "
                                               "unreachable: with the bot and up to three workers at 0.25 "
                                               "they stay within the budget together.")
    schedule_posts_per_second: float = Field(20.0, gt=0, description="Scheduled posts started a second at most "
                                             "when many are due together (spread out from their dispatch on; "
                                             "the rest of the REST budget stays the bot's).")
    # the Discord bot (bot/)
    discord_gateway_url: str = Field("", validation_alias=AliasChoices("IMPROBABLE_DISCORD_GATEWAY_URL",
                                                                       "DISCORD_GATEWAY_URL"),
                                     description="Discord gateway websocket URL; empty means Discord's own.")
    discord_sync_guild: int | None = Field(None, validation_alias=AliasChoices("IMPROBABLE_DISCORD_SYNC_GUILD",
                                                                               "DISCORD_SYNC_GUILD"),
                                           description="Sync slash commands to this guild only (instant; "
                                           "for development). Empty: sync them globally.")
    discord_sync_always: bool = Field(False, description="Sync the slash commands at every start, not only when "
                                      "they changed since the last sync.")
    shard_count: int | None = Field(None, ge=1, description="Gateway shards of the whole bot, all its processes "
                                    "together; empty: the count Discord recommends (then this process runs them "
                                    "all). Set it, with IMPROBABLE_SHARD_IDS, to split the shards over processes.")
    shard_ids: Annotated[list[int] | None, NoDecode] = Field(
        None, description="Shards this process runs, comma-separated (e.g. 0,1), each below IMPROBABLE_SHARD_COUNT "
        "(required with it); empty: all of them. Every shard must be run by exactly one process.")
    bot_enqueue_timeout: float = Field(2.0, description="Seconds the bot waits to hand a job to the broker "
                                       "before telling the user the service is unavailable.")
    bot_worker_check_after: float = Field(1.0, description="A generate job not started after this many seconds "
                                          "makes the bot check that a worker is listening.")
    bot_stream_interval: float = Field(1.0, description="Minimum seconds between edits of a message while "
                                       "generated text streams in (at least 1).")
    bot_progress_interval: float = Field(3.0, description="Minimum seconds between edits of a training "
                                         "progress message.")
    bot_job_timeout: float = Field(300.0, description="Seconds a generate job may spend queued and running "
                                   "before the bot reports it timed out.")
    bot_default_persona: str = Field("alice", description="Persona used when a mention names none.")
    channel_learning: bool = Field(False, description="Let server managers train personas on channel history "
                                   "(`/persona learn`, only members who opted in with `/voice optin`). Turn it on "
                                   "only where Discord has granted express permission: its Developer Policy forbids "
                                   "training machine-learning models on message content obtained through the API "
                                   "without it.")
    owner_ids: list[int] = Field(default_factory=list, description="Discord user ids of the deployment's operators "
                                 "(JSON list, e.g. [123, 456]): they alone change built-in personas and use the "
                                 "operator commands.")
    retention_days: float = Field(30.0, gt=0, description="Days a generated text (its prompt and output) is kept; "
                                  "older ones are deleted by the retention sweep.")
    guild_grace_days: float = Field(7.0, ge=0, description="Days after the bot is removed from a server before "
                                    "that server's data (personas, uploads, texts, schedules) is purged; "
                                    "adding the bot back within them cancels the purge.")
    sweep_seconds: float = Field(3600.0, gt=0, description="Seconds between retention sweeps (beat, or the "
                                 "embedded bot and console).")

    # deployment-wide ceilings (service/policy.py): a server's /settings, /ambient and /schedule never go past
    # them. A job's size is counted in units (core.cost.job_cost: 1 = a default request of a default persona).
    ceiling_jobs_per_member: int = Field(5, ge=1, description="Most job units one member may have queued or "
                                         "running in a server; a server's max jobs is clamped to it.")
    ceiling_jobs_per_server: int = Field(20, ge=1, description="Most job units queued or running at once for one "
                                         "server (all members and ambient replies together).")
    ceiling_min_cooldown_seconds: int = Field(2, ge=0, description="Least cooldown between one member's "
                                              "generations (a job of n units cools down n times as long, at "
                                              "most 4); a server's lower cooldown is raised to it.")
    ceiling_min_train_cooldown_seconds: int = Field(300, ge=0, description="Least cooldown between one member's "
                                                    "training runs, managers included.")
    ceiling_upload_bytes: int = Field(25_000_000, gt=0, le=HARD_MAX_UPLOAD_BYTES, description="Largest upload "
                                      "(all files of one command together) any server may allow.")
    ceiling_stored_bytes_per_server: int = Field(200_000_000, gt=0, description="Most bytes of uploaded texts "
                                                 "and trained checkpoints one server may keep.")
    ceiling_schedules_per_server: int = Field(10, ge=0, description="Most schedules one server may have.")
    ceiling_min_schedule_interval_seconds: int = Field(600, ge=60, description="Shortest interval between two "
                                                       "posts of a schedule (cron expressions included).")
    ceiling_train_minutes_per_day: float = Field(240.0, gt=0, description="Training minutes one server may "
                                                 "start in 24 hours.")
    ceiling_ambient_chance: float = Field(0.2, gt=0, le=1, description="Highest chance per message of an "
                                          "ambient reply.")
    ceiling_ambient_cooldown_seconds: int = Field(30, ge=0, description="Least time between two ambient replies "
                                                  "in one channel.")
    ceiling_ambient_replies_per_hour: int = Field(20, ge=0, description="Most ambient replies per server per "
                                                  "hour, all channels together.")
    ingest_concurrency: int = Field(2, ge=1, description="Uploads one bot process downloads and reads at once "
                                    "(more wait their turn).")
    picture_concurrency: int = Field(2, ge=1, description="Probability pictures one bot process draws at once "
                                     "(a pool of its own).")
    picture_cooldown_seconds: float = Field(5.0, ge=0, description="Least time between one member's probability "
                                            "pictures.")

    # operations (docker-compose.yml, core/logs.py, core/metrics.py, improbable/health.py)
    log_format: Literal["text", "json"] = Field("text", description="Log lines as plain text, or one JSON "
                                                "object per line (for log collectors).")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = Field(
        "INFO", description="Least severe level logged: DEBUG, INFO, WARNING, ERROR or CRITICAL.")
    metrics_port: int = Field(0, ge=0, le=65535, description="Port of this process's Prometheus endpoint "
                              "(/metrics, /healthz, /readyz); 0 = off.")
    metrics_addr: str = Field("0.0.0.0", description="Address the metrics endpoint listens on.")

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings,
                                   file_secret_settings):
        """Precedence: arguments, environment, `<VARIABLE>_FILE` files, .env, files in /run/secrets."""
        return init_settings, env_settings, FileEnvSource(settings_cls), dotenv_settings, file_secret_settings

    @field_validator("log_format", "log_level", mode="before")
    @classmethod
    def _case_insensitive(cls, value, info):
        if isinstance(value, str):
            return value.strip().upper() if info.field_name == "log_level" else value.strip().lower()
        return value

    @field_validator("database_url", "broker_url", "result_backend")
    @classmethod
    def _url_has_scheme(cls, value: str) -> str:
        if value and not re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", value):
            raise ValueError("expected a URL like scheme://host/..., e.g. redis://localhost:6379/0 or "
                             "postgresql+psycopg://user:password@host/db")
        return value

    @field_validator("shard_ids", mode="before")
    @classmethod
    def _comma_separated(cls, value):
        """`0,1` or `[0, 1]` (a JSON list) from the environment; a list as given."""
        if isinstance(value, str):
            text = value.strip().removeprefix("[").removesuffix("]")
            return [part.strip() for part in text.split(",") if part.strip()] or None
        return value

    @model_validator(mode="after")
    def _shards_in_range(self) -> Settings:
        ids, count = self.shard_ids, self.shard_count
        if ids is None:
            return self
        if count is None:
            raise ValueError(f"IMPROBABLE_SHARD_IDS={','.join(map(str, ids))} needs IMPROBABLE_SHARD_COUNT (the "
                             "shards of all processes together)")
        wrong = [i for i in ids if not 0 <= i < count]
        if wrong or len(set(ids)) != len(ids):
            raise ValueError(f"IMPROBABLE_SHARD_IDS={','.join(map(str, ids))}: each shard id once, from 0 to "
                             f"{count - 1} (IMPROBABLE_SHARD_COUNT={count})")
        return self

    @property
    def shards(self) -> Shards:
        """The shards this process runs (core.shards)."""
        return Shards(self.shard_count, None if self.shard_ids is None else tuple(self.shard_ids))

    @model_validator(mode="after")
    def _liveness_in_order(self) -> Settings:
        self.liveness  # noqa: B018 - refused at start-up, not when the first job runs
        return self

    @property
    def liveness(self) -> Liveness:
        """The generate job's shared timings (core.contracts.Liveness) with this deployment's settings."""
        return Liveness(partial_interval=self.partial_interval, lease=self.generate_lease_seconds)

    @property
    def corpus_dirs(self) -> list[Path]:
        """IMPROBABLE_CORPUS_PATH's folders; unset: data_dir/corpora, plus ../shared/corpora beside a checkout
        (where the project's corpora live), so `improbable corpora` works with no configuration."""
        if self.corpus_path:
            return [Path(p).expanduser() for p in self.corpus_path.split(os.pathsep) if p]
        checkout = Path(__file__).resolve().parent.parent
        shared = [checkout.parent / "shared" / "corpora"] if (checkout / "pyproject.toml").is_file() else []
        return [self.data_dir / "corpora", *[d for d in shared if d.is_dir()]]

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'improbable.db'}"

    @property
    def effective_storage_url(self) -> str:
        return self.storage_url or str(self.data_dir / "storage")

    @property
    def runs_dir(self) -> Path:
        """Local working folders of training runs (checkpoints are also copied to storage)."""
        return self.data_dir / "runs"


class FileEnvSource(EnvSettingsSource):
    """`IMPROBABLE_DISCORD_TOKEN_FILE=/run/secrets/token` (any setting's variable + `_FILE`): the setting's
    value is the file's content, without surrounding whitespace."""

    def get_field_value(self, field, field_name: str):
        for field_key, env_name, is_complex in self._extract_field_info(field, field_name):
            path = self.env_vars.get(f"{env_name}_file")
            if path:
                try:
                    return Path(path).read_text(encoding="utf-8").strip(), field_key, is_complex
                except (OSError, UnicodeDecodeError) as e:
                    reason = e.strerror if isinstance(e, OSError) else "not UTF-8 text"
                    raise SettingsError(f"{env_name.upper()}_FILE={path}: cannot read it ({reason})") from None
        return None, field_name, False


class SettingsError(ValueError):
    """Invalid configuration. The message has one line per bad setting and names its variable."""


SECRET_FIELDS = frozenset({"discord_token"})  # shown as **** by `improbable config`


def check_upload_cap(max_upload_mb: float) -> int:
    """A server's upload cap in MB → bytes, or SettingsError: no setting may raise it past
    HARD_MAX_UPLOAD_BYTES (core.text refuses bigger files whatever a setting says)."""
    ceiling = HARD_MAX_UPLOAD_BYTES / 1e6
    if not 0 < max_upload_mb <= ceiling:
        raise SettingsError(f"max upload must be more than 0 and at most {ceiling:g} MB (got {max_upload_mb:g} MB): "
                            "bigger files need gigabytes of memory to decode.")
    return int(max_upload_mb * 1_000_000)


def env_names(field_name: str) -> list[str]:
    """The environment variables that set a field (its aliases, else IMPROBABLE_<NAME>)."""
    field = Settings.model_fields[field_name]
    alias = field.validation_alias
    if isinstance(alias, AliasChoices):
        return [a for a in alias.choices if isinstance(a, str)]
    if isinstance(alias, str):
        return [alias]
    return [f"IMPROBABLE_{field_name.upper()}"]


def mask_url(value: str) -> str:
    """`scheme://user:secret@host` → `scheme://user:****@host`; `?password=x` → `?password=****`.
    The secret runs to the last "@": an unencoded password may hold "/", "@", "?" or "#" (issue 12: a "/"
    used to end the match, printing the password in clear). Masking too much beats showing a secret."""
    scheme = r"[A-Za-z][A-Za-z0-9+.-]*://" if re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", value) else ""
    value = re.sub(rf"^({scheme}[^/@:\s]*):\S*@", r"\1:****@", value)
    return re.sub(r"(?i)([?&](?:password|passwd|secret|token|key)=)[^&]*", r"\1****", value)


def masked_value(field_name: str, value) -> str:
    """A setting's value as `improbable config` and error messages show it: secrets never in clear."""
    text = "" if value is None else str(value)
    if field_name in SECRET_FIELDS or re.search(r"(^|_)(token|password|secret|api_key)$", field_name):
        return "****" if text else ""
    return mask_url(text)


def _describe(error: dict) -> str:
    loc = [str(part) for part in error.get("loc", ())]
    if not loc:  # a rule across settings (the liveness order)
        return "invalid settings: " + str(error.get("msg", "")).removeprefix("Value error, ")
    name = loc[0]
    field_name = next((f for f in Settings.model_fields if name == f or name in env_names(f)), None)
    if field_name is None:
        return f"invalid setting {name}: {error.get('msg')}"
    var = name if name.isupper() else env_names(field_name)[0]
    shown = masked_value(field_name, error.get("input")) if "input" in error else ""
    message = str(error.get("msg", "")).removeprefix("Value error, ")
    return f"invalid setting {var}={shown!r}: {message}"


def unknown_env_vars(environ=None) -> list[tuple[str, str | None]]:
    """IMPROBABLE_* variables that set nothing (typos), each with the closest real name (or None)."""
    import difflib

    known = {name for field in Settings.model_fields for name in env_names(field)}
    known |= {f"{name}_FILE" for name in known}
    environ = os.environ if environ is None else environ
    return [(var, next(iter(difflib.get_close_matches(var.upper(), sorted(known), n=1)), None))
            for var in sorted(environ) if var.upper().startswith("IMPROBABLE_") and var.upper() not in known
            and not var.upper().startswith("IMPROBABLE_TEST_")]


def load_settings(**values) -> Settings:
    """Settings(**values), raising SettingsError (one line per bad setting, naming its variable)."""
    try:
        return Settings(**values)
    except ValidationError as e:
        raise SettingsError("\n".join(_describe(err) for err in e.errors())) from None
    except ValueError as e:  # pydantic-settings wraps what a source raised (FileEnvSource's SettingsError)
        if isinstance(e.__cause__, SettingsError):
            raise e.__cause__ from None
        raise


@lru_cache
def get_settings() -> Settings:
    return load_settings()
