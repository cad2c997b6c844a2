"""What every request handler reads from the app it runs in: the app's settings and its Redis client."""

from dataclasses import dataclass

from flask import current_app, g
from redis import Redis

from imagejobs.clients import Client
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


def client() -> Client:
    """The client the request comes from (hooks.identify found it)."""
    return g.client
