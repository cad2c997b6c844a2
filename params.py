"""Request parameters, declared once as pydantic models: they validate requests and describe them.

A request's parameters may come from the query string, form fields or a JSON body; RestAPI merges
them into one dict and validates it here, before anything is enqueued.
"""
import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from Image import FORMATS


class _Params(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    def check_image_count(self, count: int) -> None:
        """Refuse (InvalidParameter) a number of images this action cannot take; any count by default."""


class Source(_Params):
    """Which images a request names (uploads come as files, not parameters)."""

    imagePath: str | None = Field(None, description="a file or folder inside the images root", min_length=1, max_length=1024)
    recursive: bool = Field(False, description="include the subfolders of a folder")
    imageUrl: list[str] | None = Field(None, description="an http(s) URL, or several (a JSON list), that a worker downloads")

    @field_validator("imageUrl", mode="before")
    @classmethod
    def _one_or_many(cls, value):
        """One URL, a JSON list of them (in a JSON body, or as the text of a field), or None."""
        if isinstance(value, str):
            value = value.strip()
            if value.startswith("["):
                try:
                    return json.loads(value)
                except ValueError:
                    raise ValueError("imageUrl looks like a JSON list but is not valid JSON") from None
            return [value] if value else None
        return value


class SizeParams(_Params):
    pass


class ResizeParams(_Params):
    width: int = Field(100, ge=1, le=4096, description="box width in pixels")
    height: int = Field(100, ge=1, le=4096, description="box height in pixels")
    fit: Literal["contain", "cover", "stretch"] = Field("contain", description="keep aspect inside the box, fill and crop, or distort")
    format: Literal[FORMATS] | None = Field(None, description="output format; default: the source's")

    @field_validator("format", "fit", mode="before")
    @classmethod
    def _lower(cls, value):
        if isinstance(value, str):
            value = value.strip().lower()
            return {"jpg": "jpeg", "": None}.get(value, value)
        return value


class ClassifyParams(_Params):
    top: int = Field(5, ge=1, le=20, description="how many of the best ImageNet labels to give")


class PlotParams(_Params):
    kind: Literal["histogram", "sizes"] = Field(description="histogram of one image, or width x height scatter of several")

    def check_image_count(self, count: int) -> None:
        if self.kind == "histogram" and count != 1:
            raise InvalidParameter(f"kind=histogram plots one image, but {count} were given; name a single file.")


class BrowseQuery(_Params):
    path: str = Field(".", min_length=1, max_length=1024, description="a folder inside the images root; default: the root")


class ResultQuery(_Params):
    wait: float = Field(0, ge=0, le=30, description="seconds to hold the answer until the job ends (then 200 with its result)")


class AnyActionParams(Source, ResizeParams, ClassifyParams, ResultQuery):
    """Every parameter any action takes: checked on every request, so a malformed one is a 400 even
    where the chosen action would not read it."""

    kind: Literal["histogram", "sizes"] | None = None


class FileQuery(_Params):
    index: int | None = Field(None, ge=0, description="in a batch: the entry whose thumbnail to download")


class InvalidParameter(ValueError):
    """A parameter failed validation; str() names it in one sentence."""


def validate(model: type[_Params], values: dict, strict: bool = False) -> _Params:
    """values as the model; strict for a JSON body, whose values carry their types (0 is not a boolean),
    lax for query strings and form fields, which are all text ("100" is a width)."""
    try:
        return model.model_validate(values, strict=strict)
    except ValidationError as exc:
        raise InvalidParameter(describe(exc)) from None


def describe(exc: ValidationError) -> str:
    """One sentence naming the first bad parameter, what was wrong and what was given."""
    error = exc.errors(include_url=False)[0]
    name = ".".join(str(part) for part in error["loc"]) or "the request"
    given = error.get("input")
    shown = f" (got {given!r})" if isinstance(given, (str, int, float, bool)) else ""
    return f"Invalid parameter {name}: {error['msg']}{shown}."
