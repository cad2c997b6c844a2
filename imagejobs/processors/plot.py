"""plot: one chart of all the images (an RGB histogram of one, or a width x height scatter of many),
kept in Redis beside the job's result; the result points at it."""

import Image
from imagejobs import files
from imagejobs.processors import ImageJobError, Work, outcome, size


def process(work: Work):
    yield outcome(work.named, lambda: {"plot": draw(work)})


def draw(work: Work) -> str:
    """Draw the chart, keep its PNG with the job, and return where to download it."""
    from imagejobs import plots  # matplotlib loads in the workers that draw, never in the API

    if work.params["kind"] == "histogram":
        path = work.locate(work.images[0])
        png = plots.histogram_png(
            work.named,
            Image.histogram(path, work.settings.max_image_pixels, max_decode_bytes=work.settings.max_decode_bytes),
        )
    else:
        entries = list(size.process(work))
        sizes = [entry["result"] for entry in entries if "result" in entry]
        if not sizes:
            raise ImageJobError(
                f"None of the {len(entries)} files could be read as an image, so there is nothing to plot."
            )
        png = plots.sizes_png(work.named, sizes, unreadable=len(entries) - len(sizes))
    files.save(work.redis, work.job_id, png, "image/png", work.settings.result_ttl)
    return f"/result/file?jobId={work.job_id}"
