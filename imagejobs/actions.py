"""The actions a request may ask for: the one table that the API, the workers, the OpenAPI document
and the page all read.

To add an action, write its processor (imagejobs/processors/<name>.py, see processors/__init__.py
for the signature) and its parameters model (params.py), then add its row here. Nothing else names it.
"""

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import Image
from imagejobs import params
from imagejobs.config import Settings
from imagejobs.processors import Work, classify, duplicates, plot, resize, size
from RedisConfig import CLASSIFY_QUEUE, IMAGES_QUEUE


@dataclass(frozen=True)
class Action:
    """An action: how its parameters are validated, which workers run it and what they run."""

    name: str
    params: type[params.Params]
    queue: str
    process: Callable[[Work], Iterable[dict]]
    summary: str  # the noun of the sentence a submit answers: "Thumbnail of Japan (3 images) queued; ..."
    # The page's title for such a job: {name} is a parameter's value, {, name|upper} adds ", " and the
    # upper-cased value only when the parameter was given.
    title: str
    description: str = ""  # what the page says under the action's options
    per_image: bool = True  # one entry per image (batches fan out); else one job over all the images
    # What besides the image and the parameters a result depends on (the model, for classify): an image
    # submitted again reuses its remembered result only under the same key (reuse.py). None: never reused.
    reuse_key: Callable[[Settings], str] | None = None
    # What a per-image action's batch adds to its result from all its entries once they are in (duplicates:
    # the groups), given the entries and the parameters; and the parameters only it reads, which an image's
    # own entry does not depend on (so they are left out of what its reuse is keyed by).
    summarize: Callable[[list[dict], dict], dict] | None = None
    summary_params: tuple[str, ...] = ()


def image_engine(settings: Settings) -> str:
    """The reuse key of an action whose result depends on the image, the parameters and the image engine alone:
    its version, so what an earlier engine made (a still of an animation, say) is made again."""
    return f"engine {Image.ENGINE_VERSION}"


ACTIONS = {
    action.name: action
    for action in (
        Action(
            name="size",
            params=params.SizeParams,
            queue=IMAGES_QUEUE,
            process=size.process,
            summary="Size",
            title="Size",
            description="Width, height, format and colour mode of each image.",
            reuse_key=image_engine,
        ),
        Action(
            name="resize",
            params=params.ResizeParams,
            queue=IMAGES_QUEUE,
            process=resize.process,
            summary="Thumbnail",
            title="Thumbnail {width} × {height} ({fit}{, format|upper})",
            description="The thumbnail fits the box: contain keeps the whole image, cover fills the box and crops, "
            "stretch distorts.",
            reuse_key=image_engine,
        ),
        Action(
            name="classify",
            params=params.ClassifyParams,
            queue=CLASSIFY_QUEUE,
            process=classify.process,
            summary="Classification",
            title="Classify (top {top})",
            description="The ImageNet labels a model finds most likely, with their scores.",
            reuse_key=classify.model_identity,
        ),
        Action(
            name="duplicates",
            params=params.DuplicatesParams,
            queue=IMAGES_QUEUE,
            process=duplicates.process,
            summary="Duplicates",
            title="Duplicates (within {distance} bits)",
            description="Groups of copies: resized, re-encoded or lightly cropped, and burst shots, by perceptual "
            "hash.",
            reuse_key=image_engine,
            summarize=duplicates.summarize,
            summary_params=("distance",),
        ),
        Action(
            name="plot",
            params=params.PlotParams,
            queue=IMAGES_QUEUE,
            process=plot.process,
            summary="Plot",
            title="Plot: {kind}",
            description="An RGB histogram of one image, or a width x height scatter of several.",
            per_image=False,
        ),
    )
}
DEFAULT_ACTION = "resize"  # what a POST without an action does
READ_ACTION = "size"  # the one action GET /imageapi runs (it changes nothing on disk)
ALIASES = {"thumbnail": "resize"}  # other names users give an action (the page calls resize "Thumbnail")

# Every parameter any action takes, with where the images come from and how long to wait.
AnyActionParams = params.merged(
    "AnyActionParams", params.Source, *(action.params for action in ACTIONS.values()), params.WaitQuery
)
