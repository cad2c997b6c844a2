"""The classify action's work. Only the classify worker imports this module (tasks.PROCESSORS names it by
path), so the API and the size/resize workers never load the model or its libraries."""
import logging
import time
from functools import cache

import tasks
from classifier import Classifier, ModelMissing
from config import settings

log = logging.getLogger(__name__)


@cache
def model() -> Classifier:
    """The process's one classifier, loaded on first use (a failure is not cached: the next job tries again)."""
    return Classifier.load(settings.classifier_model, settings.classifier_labels, cache_dir=settings.classifier_cache_dir)


def warm_up() -> None:
    """Load the model before the worker takes its first job, so no job pays for the load."""
    started = time.perf_counter()
    try:
        log.info("classifier %s loaded in %.1f s", model().name, time.perf_counter() - started)
    except ModelMissing as exc:
        log.error("no classifier: %s Classify jobs will fail with this sentence until it is fixed.", exc)


def classify_images(images: list[str], params: dict) -> list[dict]:
    """{"image", "result": {"model", "predictions"}} or {"image", "error"} per image, in order, classified in batches."""
    entries = [tasks.entry(image, lambda path: path) for image in images]  # finds (downloads) each image
    try:
        classifier = model()
    except ModelMissing as exc:
        return [{"image": entry["image"], "error": entry.get("error", str(exc))} for entry in entries]
    located = [entry for entry in entries if "result" in entry]
    outcomes = classifier.classify([entry["result"] for entry in located], params.get("top", 5), settings.max_image_pixels)
    for entry, outcome in zip(located, outcomes):
        if isinstance(outcome, Exception):
            del entry["result"]
            entry["error"] = str(outcome)
        else:
            entry["result"] = {"model": classifier.name, "predictions": outcome}
    return entries
