"""Clients: who sends work, and what is theirs.

With API_TOKENS set, each token is a client with a name (`name:token`, or a bare token named after a
short hash of it). A job, its result, its files and its inputs (uploads, downloads, and the thumbnails
made of them) belong to the client that submitted it; every other client is told they do not exist
(404), and never sees them in a folder listing or a folder batch. Without API_TOKENS (the API then
listens on loopback only) all work belongs to one anonymous client, which sees everything.
"""

from dataclasses import dataclass, field

from redis import Redis
from rq.job import Job

from imagejobs import inputs

ANONYMOUS = "anonymous"


@dataclass
class Client:
    name: str
    redis: Redis
    sole: bool = False  # the one client of a service without tokens: all work is its own
    _owners: dict = field(default_factory=dict)  # job id -> the owner of its inputs, read once per request

    def owns(self, job: Job) -> bool:
        return self.sole or job.meta.get("client", ANONYMOUS) == self.name

    def sees(self, relative: str) -> bool:
        """Whether a path (relative to the root) is this client's to see: anything but another client's inputs."""
        job_id = None if self.sole else inputs.job_of(relative)
        if job_id is None:
            return True
        if job_id not in self._owners:
            self._owners.update(inputs.owners(self.redis, [job_id]))
        return self._owners[job_id] == self.name
