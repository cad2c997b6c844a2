"""classify: the ImageNet labels a model finds most likely in each image, classified in batches.

The model loads once per process, on first use or at the classify worker's start (warm_up), and only
there: the API and the image workers never import the classifier or its libraries.
"""

import logging
import os
import time
from functools import cache

from imagejobs.config import Settings
from imagejobs.processors import Work, outcome

log = logging.getLogger(__name__)
BUILTIN = "efficientnet-lite0"


@cache
def model(settings: Settings):
    """The process's one classifier (a failure is not cached: the next job tries again)."""
    from imagejobs.classifier import Classifier

    return Classifier.load(
        settings.classifier_model, settings.classifier_labels, cache_dir=settings.classifier_cache_dir
    )


def model_identity(settings: Settings) -> str:
    """Which model classifies: the built-in one, or the configured file as it is now (its path and times),
    so a classification is reused only for the same model."""
    if not settings.classifier_model:
        return BUILTIN
    try:
        return f"{settings.classifier_model}@{os.stat(settings.classifier_model).st_mtime_ns}"
    except OSError:
        return settings.classifier_model


def warm_up(settings: Settings) -> None:
    """Load the model before the worker takes its first job, so no job pays for the load."""
    from imagejobs.classifier import ModelMissing

    started = time.perf_counter()
    try:
        log.info("classifier %s loaded in %.1f s", model(settings).name, time.perf_counter() - started)
    except ModelMissing as exc:
        log.error("no classifier: %s Classify jobs will fail with this sentence until it is fixed.", exc)


def process(work: Work) -> list[dict]:
    """{"image", "result": {"model", "predictions"}} or {"image", "error"} per image, in order."""
    from imagejobs.classifier import ModelMissing

    entries = [outcome(image, work.locate, image) for image in work.images]  # finds (downloads) each image
    try:
        classifier = model(work.settings)
    except ModelMissing as exc:
        return [{"image": entry["image"], "error": entry.get("error", str(exc))} for entry in entries]
    located = [entry for entry in entries if "result" in entry]
    outcomes = classifier.classify(
        [entry["result"] for entry in located],
        work.params.get("top", 5),
        work.settings.max_image_pixels,
        work.settings.max_decode_bytes,
    )
    for entry, found in zip(located, outcomes):
        if isinstance(found, Exception):
            del entry["result"]
            entry["error"] = str(found)
        else:
            entry["result"] = {"model": classifier.name, "predictions": found}
    return entries
