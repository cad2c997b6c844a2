"""What every request handler reads from the app it runs in: the app's settings and its Redis client."""

from dataclasses import dataclass

from flask import current_app
from redis import Redis

from imagejobs.config import Settings


@dataclass(frozen=True)
class Service:
    settings: Settings
    redis: Redis


def service() -> Service:
    return current_app.extensions["imagejobs"]


def settings() -> Settings:
    return service().settings


def redis() -> Redis:
    return service().redis
