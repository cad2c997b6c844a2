"""schemathesis against the live service, started as run.py starts it: every route and method, with
stateful links from a jobId to /result, and every check (all are on by default) but the one schemathesis.toml
turns off. It must find nothing."""

import shutil
import subprocess

from imagejobs.embedded_redis import free_port
from tests.support import ROOT, RunningService, copy_sample


def test_schemathesis_finds_nothing(tmp_path):
    service = RunningService(tmp_path, "--port", str(free_port()), "--workers", "1")  # and the classify worker
    copy_sample("castle_image.jpg", service.images / "0")  # schemathesis likes "0" for a string
    copy_sample("jemma.png", service.images / "demo" / "jemma.png")
    try:
        url = service.url()
        run = subprocess.run(
            [
                shutil.which("schemathesis"),
                "--config-file",
                str(ROOT / "schemathesis.toml"),
                "run",
                f"{url}openapi.json",
                "--max-examples",
                "40",
                "--workers",
                "1",
                "--seed",
                "20261123",
                "--generation-deterministic",
                "--no-color",
            ],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        service.interrupt()
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
