"""Request parameters, declared once as pydantic models: they validate requests, and describe them to the
OpenAPI document and to the page (`fields`).

A request's parameters may come from the query string, form fields or a JSON body; the API merges
them into one dict and validates it here, before anything is enqueued.
"""

import difflib
import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator
from pydantic_core import PydanticCustomError

from Image import FORMATS, FRAMES, GRAVITIES


class Params(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    def check_image_count(self, count: int) -> None:
        """Refuse (InvalidParameter) a number of images this action cannot take; any count by default."""

    def check_needs(self) -> None:
        """Refuse (InvalidParameter) a parameter given where the other parameters' values it needs (its
        shown(needs=...), which the page reads too) do not hold: gravity with fit=contain would be dropped without
        a word. Checked on the chosen action's parameters only (not in merged models: a GET size job's gravity
        is refused as one size does not use)."""
        for name, field in type(self).model_fields.items():
            needs = ((field.json_schema_extra or {}).get("x-shown") or {}).get("needs", {})
            value = getattr(self, name)
            unmet = {other: wanted for other, wanted in needs.items() if getattr(self, other) != wanted}
            if unmet and name in self.model_fields_set and value != field.default:
                wanted = " and ".join(f"{other}={wanted}" for other, wanted in unmet.items())
                raise InvalidParameter(f"Invalid parameter {name}: it needs {wanted} (got {value!r}).")


def shown(
    unit: str | None = None,
    unit_name: str | None = None,
    labels: dict | None = None,
    unset: str | None = None,
    needs: dict | None = None,
    example: str | None = None,
) -> dict:
    """How the page shows a parameter, beside what its schema says: a unit ("px", "pixels"), the labels
    of its choices, the label of "not given" (for an optional choice), the other parameters' values it needs
    to mean anything (the page offers it only then), and an example value (for a text field)."""
    extra = {
        "unit": unit,
        "unitName": unit_name,
        "labels": labels,
        "unsetLabel": unset,
        "needs": needs,
        "example": example,
    }
    return {"x-shown": {name: value for name, value in extra.items() if value is not None}}


class Source(Params):
    """Which images a request names (uploads come as files, not parameters)."""

    imagePath: str | None = Field(
        None, description="a file or folder inside the images root", min_length=1, max_length=1024
    )
    recursive: bool = Field(False, description="include the subfolders of a folder")
    force: bool = Field(False, description="redo every image, even one whose earlier result could be reused")
    callbackUrl: str | None = Field(
        None,
        min_length=1,
        max_length=2048,
        description="an http(s) URL to POST the job's answer to when it ends, signed (X-Imagejobs-Signature)",
    )
    imageUrl: list[str] | None = Field(
        None, description="an http(s) URL, or several (a JSON list), that a worker downloads"
    )

    @field_validator("imageUrl", mode="before")
    @classmethod
    def _one_or_many(cls, value):
        """One URL, a JSON list of them (in a JSON body, or as the text of a field), or None."""
        if isinstance(value, str):
            value = value.strip()
            if value.startswith("["):
                try:
                    return load_json(value)
                except ValueError as exc:
                    raise ValueError(f"imageUrl looks like a JSON list but is not: {exc}") from None
            return [value] if value else None
        return value


class SizeParams(Params):
    pass


PIXELS = shown("px", "pixels")


class ResizeParams(Params):
    width: int = Field(100, ge=1, le=4096, title="Width", description="box width in pixels", json_schema_extra=PIXELS)
    height: int = Field(
        100, ge=1, le=4096, title="Height", description="box height in pixels", json_schema_extra=PIXELS
    )
    fit: Literal["contain", "cover", "stretch"] = Field(
        "contain", title="Fit", description="keep aspect inside the box, fill and crop, or distort"
    )
    format: Literal[FORMATS] | None = Field(
        None,
        title="Format",
        description="output format; default: the source's",
        json_schema_extra=shown(
            labels={"jpeg": "JPEG", "png": "PNG", "webp": "WebP", "avif": "AVIF", "gif": "GIF"}, unset="as the source"
        ),
    )
    gravity: Literal[GRAVITIES] = Field(
        "center",
        title="Crop at",
        description="with fit=cover, where the crop sits: the centre, an edge or a corner, or smart (the part "
        "with the most detail, colour and skin)",
        json_schema_extra=shown(
            labels={
                "center": "Centre",
                "north": "Top",
                "south": "Bottom",
                "east": "Right",
                "west": "Left",
                "northeast": "Top right",
                "northwest": "Top left",
                "southeast": "Bottom right",
                "southwest": "Bottom left",
                "smart": "Smart (the subject)",
            },
            needs={"fit": "cover"},
        ),
    )
    focus: str | None = Field(
        None,
        max_length=100,
        title="Focus x,y",
        description="with fit=cover, the point the crop is centred on as nearly as it can be: x,y as fractions "
        "of the width and height (0.1,0.5: near the left edge, half way down); it overrides gravity",
        json_schema_extra=shown(needs={"fit": "cover"}, example="0.1,0.5"),
    )
    frames: Literal[FRAMES] = Field(
        "all",
        title="Frames",
        description="all: an animation stays animated where the format can animate (not JPEG); first: a still",
        json_schema_extra=shown(labels={"all": "Keep the animation", "first": "First frame only"}),
    )

    @field_validator("focus")
    @classmethod
    def _two_fractions(cls, value):
        parts = [] if value is None else value.split(",")
        try:
            fractions = [float(part) for part in parts]
        except ValueError:
            fractions = []
        if value is not None and not (len(fractions) == 2 and all(0 <= share <= 1 for share in fractions)):
            raise PydanticCustomError(
                "focus", "focus is x,y: two fractions from 0 to 1 (0.1,0.5 is near the left edge, half way down)"
            )
        return value if value is None else ",".join(str(share) for share in fractions)

    @field_validator("format", "fit", "frames", "gravity", mode="before")
    @classmethod
    def _lower(cls, value):
        if isinstance(value, str):
            value = value.strip().lower()
            return {"jpg": "jpeg", "": None}.get(value, value)
        return value


class ClassifyParams(Params):
    top: int = Field(
        5, ge=1, le=20, title="Labels per image", description="how many of the best ImageNet labels to give"
    )


class PlotParams(Params):
    kind: Literal["histogram", "sizes"] = Field(
        title="Chart",
        description="histogram of one image, or width x height scatter of several",
        json_schema_extra=shown(labels={"histogram": "RGB histogram (one image)", "sizes": "Sizes (several images)"}),
    )

    def check_image_count(self, count: int) -> None:
        if self.kind == "histogram" and count != 1:
            raise InvalidParameter(f"kind=histogram plots one image, but {count} were given; name a single file.")


class DuplicatesParams(Params):
    distance: int = Field(
        10,
        ge=0,
        le=16,
        title="Distance",
        description="most bits two images' 64-bit perceptual hashes may differ by to be grouped: 0 exact copies; "
        "10 resized, re-encoded or lightly cropped copies and burst shots; unrelated photos differ by about 32",
        json_schema_extra=shown("bits", "bits"),
    )

    def check_image_count(self, count: int) -> None:
        if count < 2:
            raise InvalidParameter("duplicates compares images: name a folder, or upload two or more files.")


class BrowseQuery(Params):
    path: str = Field(
        ".", min_length=1, max_length=1024, description="a folder inside the images root; default: the root"
    )


class WaitQuery(Params):
    wait: float = Field(
        0, ge=0, le=30, description="seconds to hold the answer until the job ends (then 200 with its result)"
    )


class ResultQuery(WaitQuery):
    seen: int | None = Field(
        None,
        ge=0,
        description="with wait, for a batch: answer as soon as progress.done + progress.failed differs from this",
    )


class JobQuery(Params):
    jobId: str = Field(min_length=1, max_length=200, description="the jobId an enqueue answered")


def merged(name: str, *models: type[Params]) -> type[Params]:
    """One model with every parameter of the models (their validators too), each optional: what any
    request may carry, checked on every request so that a malformed one is a 400 even where the chosen
    action would not read it."""
    optional = {
        field_name: (field.annotation | None, Field(None, description=field.description))
        for model in models
        for field_name, field in model.model_fields.items()
        if field.is_required()
    }
    return create_model(name, __base__=models, **optional)


def fields(model: type[Params]) -> list[dict]:
    """The model's parameters as the page builds its inputs from them: name, title, type ("integer",
    "boolean", "choice", "string"), default, minimum and maximum, choices or maxLength, with how to show them."""
    schema = model.model_json_schema()
    described = []
    for name, prop in schema["properties"].items():
        options = [option for option in prop.get("anyOf", [prop]) if option.get("type") != "null"]
        field = {
            "name": name,
            "title": prop.get("title", name),
            "description": prop.get("description", ""),
            "required": name in schema.get("required", ()),
            "optional": len(options) < len(prop.get("anyOf", [prop])),
            **prop.get("x-shown", {}),
        }
        if "default" in prop:
            field["default"] = prop["default"]
        if "enum" in options[0]:
            field.update(type="choice", choices=options[0]["enum"])
        else:
            field.update(
                type=options[0].get("type"), minimum=options[0].get("minimum"), maximum=options[0].get("maximum")
            )
            if "maxLength" in options[0]:
                field["maxLength"] = options[0]["maxLength"]
        described.append(field)
    return described


class FileQuery(Params):
    index: int | None = Field(None, ge=0, description="in a batch: the entry whose thumbnail to download")


MAX_JSON_DIGITS = 30  # no parameter needs a longer number; Python refuses to convert past 4,300 digits anyway


class _NumberTooLong(ValueError):
    pass


def _bounded_int(digits: str) -> int:
    if len(digits.lstrip("-")) > MAX_JSON_DIGITS:
        raise _NumberTooLong(f"a number in it has {len(digits.lstrip('-')):,} digits (at most {MAX_JSON_DIGITS})")
    return int(digits)


def load_json(text: str | bytes):
    """JSON text as Python values; ValueError with a sentence for text that is not JSON, however it fails:
    JSON nested deeper than Python's recursion allows is refused the same way, never a crash, and so is a
    number too long to convert (5,000 digits was a 500: Python's own limit raised while parsing)."""
    try:
        return json.loads(text, parse_int=_bounded_int)
    except RecursionError:
        raise ValueError("it is nested too deeply") from None
    except UnicodeDecodeError:
        raise ValueError("it is not UTF-8 text") from None
    except _NumberTooLong as exc:
        raise ValueError(str(exc)) from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"it is not valid JSON ({exc.msg} at character {exc.pos})") from None


class InvalidParameter(ValueError):
    """A parameter failed validation; str() names it in one sentence."""


def takes(*names: str, models: tuple[type[Params], ...] = ()):
    """Mark a view with the parameters it knows (these names and the models' fields): any other is a 400."""
    known = frozenset(names).union(*(model.model_fields for model in models))

    def mark(view):
        view.takes = known
        return view

    return mark


def reject_unknown(given, known: frozenset[str]) -> None:
    """InvalidParameter naming the first parameter not in known, and the nearest known name if one is close
    (a typo like widht=20 would otherwise be ignored, and the job run with the default)."""
    for name in given:
        if name in known:
            continue
        hint = did_you_mean(name, known) or f"; this route takes {', '.join(sorted(known)) or 'none'}."
        raise InvalidParameter(f"Unknown parameter {name!r}{hint}")


def did_you_mean(given: str, choices) -> str:
    """ "; did you mean 'x'?" for the choice closest to a misspelt one, or "" when none is close."""
    close = difflib.get_close_matches(given, choices, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


REPEATABLE = frozenset({"imageUrl"})  # the one parameter a submit may give several times


def reject_repeated(given, repeatable: frozenset[str] = frozenset()) -> None:
    """InvalidParameter for a parameter given more than once (a multidict: query or form) that may not be:
    taking the first of several would quietly ignore the others."""
    for name, values in given.lists():
        if len(values) > 1 and name not in repeatable:
            raise InvalidParameter(f"Invalid parameter {name}: give it once, not {len(values)} times.")


def validate(model: type[Params], values: dict, strict: bool = False) -> Params:
    """values as the model; strict for a JSON body, whose values carry their types (0 is not a boolean),
    lax for query strings and form fields, which are all text ("100" is a width)."""
    try:
        return model.model_validate(values, strict=strict)
    except ValidationError as exc:
        raise InvalidParameter(describe(exc)) from None


SHOWN_MAX = 100  # characters of a bad value an error sentence repeats


def describe(exc: ValidationError) -> str:
    """One sentence naming the first bad parameter, what was wrong and what was given."""
    error = exc.errors(include_url=False)[0]
    name = ".".join(str(part) for part in error["loc"]) or "the request"
    given = error.get("input")
    if isinstance(given, str) and len(given) > SHOWN_MAX:  # a 100 KB value is not echoed back whole
        given = f"{given[:SHOWN_MAX]}... ({len(given)} characters)"
    shown = f" (got {given!r})" if isinstance(given, (str, int, float, bool)) else ""
    message = error["msg"]
    if error["type"] in ("int_type", "float_type") and isinstance(given, str):  # strict: a JSON body's string
        message = "in JSON, a number, not a string"
    return f"Invalid parameter {name}: {message}{shown}."
