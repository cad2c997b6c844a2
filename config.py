"""The service's settings, read once from the environment (the same names in every mode)."""
from functools import cached_property
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every knob of the service. Field names are the environment variables, upper-cased."""

    model_config = SettingsConfigDict(frozen=True)

    redis_url: str | None = None
    images_dir: Path = Path("images")
    logs_dir: Path = Path("logs")
    result_ttl: int = Field(500, ge=1)
    port: int = Field(5000, ge=1, le=65535)
    bind_host: str = "127.0.0.1"
    max_image_pixels: int = Field(50_000_000, ge=1)
    max_upload_mb: int = Field(200, ge=1)
    job_timeout: int = Field(600, ge=1, description="seconds one job (one image or one chunk) may run")
    job_retries: int = Field(2, ge=0, description="re-runs of a job whose worker died")
    chunk_size: int = Field(32, ge=1, description="most images in one job of a batch")

    @cached_property
    def images_root(self) -> Path:
        """The images root as an absolute path with symlinks resolved: every check compares against it."""
        return self.images_dir.resolve()


settings = Settings()
