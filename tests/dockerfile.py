"""The Dockerfile read as a builder reads it, for the tests that check it without building it: its
instructions, its stages, and what an image built from a stage holds (the stages it is FROM, then its own)."""

import re
from functools import cache
from pathlib import Path

DOCKERFILE = Path(__file__).resolve().parents[1] / "Dockerfile"


@cache
def instructions() -> tuple[tuple[str, str], ...]:
    """Every (INSTRUCTION, arguments), comments dropped and continuations joined."""
    found, buf = [], ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if line.startswith("#") or (not buf and not line):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        keyword, _, args = buf.strip().partition(" ")
        found.append((keyword.upper(), args.strip()))
        buf = ""
    assert not buf, "the Dockerfile ends with a line continuation"
    return tuple(found)


def stage_alone(stage: str) -> list[tuple[str, str]]:
    """One stage's own instructions, its FROM first."""
    everything = instructions()
    starts = [i for i, (keyword, _) in enumerate(everything) if keyword == "FROM"]
    for begin, end in zip(starts, starts[1:] + [len(everything)]):
        if everything[begin][1].endswith(f" AS {stage}"):
            return list(everything[begin:end])
    raise AssertionError(f"no stage {stage!r} in the Dockerfile")


def parent(stage: str) -> str | None:
    """The stage this one is built FROM, or None when it starts from an image."""
    source = stage_alone(stage)[0][1].split()[0]
    names = {args.split()[-1] for keyword, args in instructions() if keyword == "FROM" and " AS " in args}
    return source if source in names else None


def stage(name: str) -> list[tuple[str, str]]:
    """What the image built from a stage holds: its parent stages' instructions, then its own."""
    above = parent(name)
    return (stage(above) if above else []) + stage_alone(name)


def args(name: str) -> dict[str, str]:
    """Default values of the ARGs a stage declares itself: an ARG ends with its stage, so a stage that uses
    one must declare it again (an ARG before the first FROM reaches FROM lines only)."""
    defaults = {}
    for keyword, text in stage_alone(name):
        if keyword == "ARG":
            key, _, default = text.partition("=")
            defaults[key] = default
    return defaults


def pip_requirements(name: str) -> list[str]:
    """The requirements files the image built from a stage installs (`pip install ... -r FILE`), in order."""
    runs = [text for keyword, text in stage(name) if keyword == "RUN" and "pip install" in text]
    return [file for run in runs for file in re.findall(r"-r\s+(\S+)", run)]


def base_python() -> str:
    """The Python version of the official image the first stage starts from (python:X.Y-slim)."""
    match = re.fullmatch(r"python:(\d+\.\d+)-slim AS \S+", instructions()[0][1])
    assert match, "the Dockerfile's first stage does not start from python:<version>-slim"
    return match.group(1)
