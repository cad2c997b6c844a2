"""The plot action: charts drawn by a worker, kept in Redis with the job, downloaded as PNG files."""

import dataclasses
import io

import psutil
from PIL import Image as PILImage
from redis import Redis

from imagejobs import jobs, plots, tasks
from imagejobs.actions import ACTIONS
from imagejobs.config import settings
from imagejobs.worker import ImageWorker
from RedisConfig import SERIALIZER, connection, queue
from tests.support import copy_sample, rel, result_of, submit


def downloaded_png(client, job_id: str) -> PILImage.Image:
    answer = client.get(f"/result/file?jobId={job_id}")
    assert answer.status_code == 200 and answer.mimetype == "image/png"
    assert f"filename={job_id}.png" in answer.headers["Content-Disposition"]
    image = PILImage.open(io.BytesIO(answer.data))
    image.load()
    return image


def test_histogram_of_one_image_is_a_png_download(client, folder, images_root):
    copy_sample("castle_image.jpg", folder / "castle.jpg")
    body = submit(
        client,
        "POST",
        query_string={"action": "plot", "kind": "histogram", "imagePath": rel(folder / "castle.jpg", images_root)},
    )
    done = result_of(client, body["jobId"])
    assert done["status"] == "finished" and done["result"] == {"plot": f"/result/file?jobId={body['jobId']}"}
    image = downloaded_png(client, body["jobId"])
    assert image.format == "PNG" and image.width >= 800 and image.height >= 500
    assert len(image.getcolors(maxcolors=100_000) or []) > 50  # a drawn chart, not a blank canvas
    ttl = connection().ttl(f"imagejob:file:{body['jobId']}")
    assert 0 < ttl <= connection().ttl(f"rq:job:{body['jobId']}") + 1  # the file goes with the result


def test_histogram_of_a_grayscale_upload(client):
    buffer = io.BytesIO()
    PILImage.linear_gradient("L").save(buffer, "PNG")
    body = submit(
        client,
        "POST",
        data={"action": "plot", "kind": "histogram", "image": (io.BytesIO(buffer.getvalue()), "gray.png")},
        content_type="multipart/form-data",
    )
    assert result_of(client, body["jobId"])["status"] == "finished"
    assert downloaded_png(client, body["jobId"]).size == (1000, 600)


def test_sizes_of_a_folder_leaves_out_unreadable_files(client, folder, images_root):
    copy_sample("castle_image.jpg", folder / "castle.jpg")
    copy_sample("jemma.png", folder / "jemma.png")
    PILImage.new("RGB", (320, 200)).save(folder / "small.webp")
    (folder / "broken.jpg").write_text("not an image")
    body = submit(client, "POST", data={"action": "plot", "kind": "sizes", "imagePath": rel(folder, images_root)})
    done = result_of(client, body["jobId"])
    assert done["status"] == "finished"
    assert downloaded_png(client, body["jobId"]).size == (1000, 600)


def test_bad_kind_and_wrong_source_are_400_before_anything_is_queued(client, folder, images_root):
    copy_sample("castle_image.jpg", folder / "castle.jpg")
    copy_sample("jemma.png", folder / "jemma.png")
    before = queue("images").count
    cases = [
        (
            {"kind": "pie", "imagePath": rel(folder / "castle.jpg", images_root)},
            "kind",
        ),  # -> "Invalid parameter kind: Input should be 'histogram' or 'sizes' (got 'pie')."
        (
            {"imagePath": rel(folder / "castle.jpg", images_root)},
            "kind",
        ),  # kind missing -> "Invalid parameter kind: Field required."
        (
            {"kind": "histogram", "imagePath": rel(folder, images_root)},
            "one image",
        ),  # a folder of two -> "kind=histogram plots one image, but 2 were given; ..."
    ]
    for values, named in cases:
        answer = client.post("/imageapi", data={"action": "plot", **values})
        assert answer.status_code == 400 and named in answer.get_json()["error"], values
    assert queue("images").count == before


def test_plotting_non_images_fails_with_a_sentence(client, folder, images_root):
    (folder / "a.jpg").write_text("text")
    (folder / "b.png").write_bytes(b"")
    histogram = submit(
        client, "POST", data={"action": "plot", "kind": "histogram", "imagePath": rel(folder / "a.jpg", images_root)}
    )
    sizes = submit(client, "POST", data={"action": "plot", "kind": "sizes", "imagePath": rel(folder, images_root)})
    failed = result_of(client, histogram["jobId"])
    assert failed["status"] == "failed" and "not an image" in failed["error"]
    failed = result_of(client, sizes["jobId"])
    assert failed["status"] == "failed" and "None of the 2 files" in failed["error"]
    assert client.get(f"/result/file?jobId={sizes['jobId']}").status_code == 404


def test_charts_have_their_size_title_and_legend():
    png = plots.sizes_png(
        "Japan",
        [{"width": 100, "height": 50, "format": "JPEG"}, {"width": 30, "height": 60, "format": "PNG"}],
        unreadable=1,
    )
    assert PILImage.open(io.BytesIO(png)).size == (1000, 600)
    png = plots.histogram_png("gray.png", {"luminance": list(range(256))})
    assert PILImage.open(io.BytesIO(png)).size == (1000, 600)


def test_memory_stays_flat_over_150_plots(folder, images_root, redis_url):
    """150 histogram jobs run by one real ImageWorker in this process, on a private queue, after 60 to warm
    up: a figure left open (a few hundred KB each, at the least) would grow it past 5% (10 MB). matplotlib
    3.11's text drawing fills native caches over the first 50 or so charts, then stays flat (histogram_png in
    a loop: 78 MB after 30, 105 after 60, 109-111 from 120 to 480), so 30 no longer warmed it up."""
    PILImage.new("RGB", (64, 48), "orange").save(folder / "tiny.png")
    image = rel(folder / "tiny.png", images_root)
    worker = ImageWorker([queue("plot-memory")], connection=Redis.from_url(redis_url), serializer=SERIALIZER)
    me = psutil.Process()
    unserved = dataclasses.replace(ACTIONS["plot"], queue="plot-memory")

    def plot_many(count: int) -> int:
        ids = [
            tasks.enqueue_whole(
                jobs.Submission(connection(), settings, "anonymous"),
                unserved,
                [image],
                {"kind": "histogram"},
                jobs.new_job_id(),
                image,
            ).id
            for _ in range(count)
        ]
        worker.work(burst=True)
        assert all(jobs.fetch(connection(), job_id, settings.result_ttl).get_status() == "finished" for job_id in ids)
        return me.memory_info().rss

    warm = plot_many(60)  # warm-up: imports, font and text caches, first allocations
    after = plot_many(150)
    assert after < warm * 1.05, f"the worker grew from {warm >> 20} MB to {after >> 20} MB over 150 plots"
