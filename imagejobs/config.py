"""The service's settings, read once from the environment (the same names in every mode)."""

import hashlib
import re
from functools import cached_property
from pathlib import Path
from typing import Literal
from urllib.parse import quote

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

CLIENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")


class Settings(BaseSettings):
    """Every knob of the service. Field names are the environment variables, upper-cased."""

    model_config = SettingsConfigDict(frozen=True)

    redis_url: str | None = None
    redis_password_file: Path | None = Field(
        None, description="a file holding Redis's password, for a REDIS_URL without one (compose makes it)"
    )
    images_dir: Path = Path("images")
    logs_dir: Path = Path("logs")
    log_format: Literal["text", "json"] = Field(
        "text", description="text: key=value lines; json: one JSON object a line"
    )
    result_ttl: int = Field(500, ge=1)
    port: int = Field(5000, ge=1, le=65535)
    bind_host: str | None = Field(None, description="default: 127.0.0.1 without API_TOKENS, all interfaces with them")
    api_tokens: str | None = Field(
        None,
        description="comma-separated name:token pairs (or bare tokens), or the path of a file of them, one a line",
    )
    require_redis_auth: bool = False
    redis_start_timeout: int = Field(
        60, ge=0, description="seconds a process starting waits for Redis to answer before it stops with the reason"
    )
    redis_restart_max_delay: float = Field(
        10, ge=0.5, description="run.py: the longest wait before restarting its own Redis again (from 0.5 s, doubling)"
    )
    redis_sentinels: str = Field(
        "",
        description="comma-separated host:port of Redis Sentinels: set, the Redis master is the one they name "
        "REDIS_SENTINEL_MASTER, found again after a failover; REDIS_URL then gives only the password, database "
        "and scheme (its host is not used) and may be left unset",
    )
    redis_sentinel_master: str = Field("mymaster", min_length=1, description="the master's name the sentinels monitor")
    redis_sentinel_password: str | None = Field(
        None, description="the sentinels' own password (their requirepass); unset: Redis's password; empty: none"
    )
    dashboard_clients: str = Field(
        "", description="with API_TOKENS: the comma-separated names of the clients that may use the RQ dashboard"
    )
    api_processes: int = Field(2, ge=1, description="the API's gunicorn worker processes")
    api_connections: int = Field(
        2000, ge=10, description="connections each API process holds at once (and Redis connections it may open)"
    )
    max_image_pixels: int = Field(50_000_000, ge=1)
    max_decode_mb: int = Field(256, ge=1, description="memory one image's decode may take (tiles, bit depth, frames)")
    max_frames: int = Field(1000, ge=1, description="frames an animation kept animated may have (frames=first: any)")
    max_upload_mb: int = Field(200, ge=1)
    max_upload_files: int = Field(1000, ge=1)
    max_folder_images: int = Field(20_000, ge=1)
    max_queue_depth: int = Field(5000, ge=1, description="queued jobs in a queue beyond which new work gets 429")
    max_urls: int = Field(100, ge=1, description="image URLs in one request")
    max_download_mb: int = Field(20, ge=1)
    allowed_url_networks: str = Field("", description="CIDRs image URLs may reach besides public addresses")
    url_connect_timeout: float = Field(5, gt=0)
    url_read_timeout: float = Field(10, gt=0)
    url_total_timeout: float = Field(30, gt=0)
    url_max_redirects: int = Field(3, ge=0)
    classifier_model: str | None = Field(None, description="a Keras model file; unset: the built-in EfficientNet-Lite0")
    classifier_labels: str | None = Field(None, description="its labels: a JSON list or one per line")
    classifier_cache_dir: str | None = Field(None, description="where the converted built-in model is cached")
    job_timeout: int = Field(600, ge=1, description="seconds one job (one image or one chunk) may run")
    job_retries: int = Field(2, ge=0, description="re-runs of a job whose worker died")
    job_heartbeat_ttl: int = Field(
        30,
        ge=3,
        description="seconds a running job's heartbeat lasts (renewed every third of it): a job whose worker "
        "died is taken up again about this long after, once another worker looks (MAINTENANCE_INTERVAL)",
    )
    maintenance_interval: int = Field(
        15, ge=1, description="seconds between a worker's looks for abandoned jobs and for inputs past INPUT_TTL"
    )
    worker_ttl: int = Field(
        45,
        ge=16,
        description="seconds a worker's registration outlives its last beat, less 60; an idle worker wakes every "
        "WORKER_TTL - 15 s to beat and look",
    )
    chunk_size: int = Field(32, ge=1, description="most images in one job of a batch")
    callback_secret: str | None = Field(
        None, description="the secret clients' callback secrets derive from; unset: one made once and kept in Redis"
    )
    callback_retry_seconds: int = Field(600, ge=0, description="how long a callback is tried again while it fails")
    reuse_max_entries: int = Field(
        100_000, ge=0, description="results remembered per client for reuse (the least recently used go first)"
    )
    input_ttl: int | None = Field(
        None, ge=1, description="seconds uploads and downloaded URLs are kept after their job; default RESULT_TTL + 1 h"
    )

    @model_validator(mode="after")
    def _sentinel_url(self):
        """With REDIS_SENTINELS and no REDIS_URL, REDIS_URL stands as redis://<REDIS_SENTINEL_MASTER>/0: the
        sentinels name the host, and every process (run.py too) sees that Redis is configured."""
        if self.redis_sentinels.strip() and not self.redis_url:
            object.__setattr__(self, "redis_url", f"redis://{quote(self.redis_sentinel_master, safe='')}/0")
        return self

    @cached_property
    def sentinel_addresses(self) -> tuple[tuple[str, int], ...]:
        """REDIS_SENTINELS as (host, port) pairs ("[::1]:26379" for IPv6); empty when unset. A malformed item
        raises ValueError naming it."""
        addresses = []
        for item in filter(None, (part.strip() for part in self.redis_sentinels.split(","))):
            host, colon, port = item.rpartition(":")
            host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
            if not (colon and host and port.isdigit() and 0 < int(port) < 65536):
                raise ValueError(f"REDIS_SENTINELS: {item!r} is not host:port")
            addresses.append((host, int(port)))
        return tuple(addresses)

    @cached_property
    def clients(self) -> dict[str, str]:
        """Each accepted bearer token and the name of the client it stands for, from API_TOKENS (a comma list,
        or the file it names, one entry a line). An entry is `name:token`, or a bare token, which is a client
        of its own named after a short hash of it. Several tokens may share a name (while one is rotated)."""
        text = self.api_tokens or ""
        if text and Path(text).is_file():
            text = Path(text).read_text().replace("\n", ",")
        clients = {}
        for entry in filter(None, (item.strip() for item in text.split(","))):
            name, colon, token = entry.partition(":")
            if not (colon and CLIENT_NAME.fullmatch(name) and token.strip()):
                name, token = f"client-{hashlib.sha256(entry.encode()).hexdigest()[:8]}", entry
            clients[token.strip()] = name
        return clients

    @cached_property
    def dashboard_names(self) -> frozenset[str]:
        return frozenset(name.strip() for name in self.dashboard_clients.split(",") if name.strip())

    @cached_property
    def tokens(self) -> tuple[str, ...]:
        """The accepted bearer tokens."""
        return tuple(self.clients)

    @cached_property
    def max_decode_bytes(self) -> int:
        return self.max_decode_mb * 1024 * 1024

    @cached_property
    def inputs_ttl(self) -> int:
        """Seconds an upload or a download is kept once its job has ended (INPUT_TTL)."""
        return self.input_ttl or self.result_ttl + 3600

    def check(self) -> None:
        """Raise ValueError on a setting that parses only when used (a malformed ALLOWED_URL_NETWORKS), so a
        process refuses to start instead of failing its first job."""
        _ = self.url_networks  # parsed now and kept
        _ = self.sentinel_addresses

    @cached_property
    def url_networks(self) -> tuple:
        """ALLOWED_URL_NETWORKS parsed; a bad item raises ValueError naming it."""
        from imagejobs.downloads import parse_networks

        return parse_networks(self.allowed_url_networks)

    @cached_property
    def listen_host(self) -> str:
        return self.bind_host or ("0.0.0.0" if self.tokens else "127.0.0.1")

    @cached_property
    def images_root(self) -> Path:
        """The images root as an absolute path with symlinks resolved: every check compares against it."""
        return self.images_dir.resolve()


settings = Settings()
