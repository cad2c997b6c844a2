"""The web page in a real browser (Debian's Chromium, driven by Playwright) against `python run.py`.

Each state a test reaches is saved as a screenshot under test-artifacts/ (git-ignored); a finished
batch is also saved there as page.png, a candidate for the README's picture (docs/page.png, copied by hand).
"""

import base64
import io
import json
import os
import re
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest
from PIL import Image as PILImage

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip("Debian's chromium is not installed (apt-get install chromium)", allow_module_level=True)

from playwright.sync_api import Page, expect, sync_playwright  # noqa: E402

from imagejobs.batch import FLUSH_EVERY  # noqa: E402
from imagejobs.embedded_redis import free_port  # noqa: E402
from tests.support import ROOT, TESTDATA, RunningService, copy_sample  # noqa: E402

ARTIFACTS = ROOT / "test-artifacts"
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
JOB_TIMEOUT = 60_000  # ms: the slowest job here, a classification, takes about a second once the model is warm
SAMPLES = ("castle_image.jpg", "jemma.png", "CogentLabs.jpg")
PAGE_SIZE = 100  # a batch's entries in the DOM at once (results.js PAGE_SIZE)
# slow/: 1000 x 600 photos; a thumbnail over 500 px needs the whole decode (half of 1000 is less: draft cannot
# help) and takes ~20 ms, so the batch runs several seconds
SLOW_IMAGES = 500
MANY_IMAGES = 300  # many/: small photos, one of them not a photo
HUGE_IMAGES = 10_000  # huge/: tiny photos, whose sizes make a batch of 10,000 entries in a few seconds


def start_service(base: Path, *args: str, env: dict | None = None) -> tuple[RunningService, str]:
    running = RunningService(base, "--port", str(free_port()), *args, env=env)
    for name in SAMPLES:
        copy_sample(name, running.images / name)
    for number in range(6):  # batch/: six photos and a text file named like a photo
        name = SAMPLES[number % 3]
        copy_sample(name, running.images / "batch" / f"{number + 1}-{name}")
    (running.images / "batch" / "notes.jpg").write_text("Shopping list: not a photo.\n")
    try:
        return running, running.url(timeout=120)
    except BaseException:
        running.process.kill()
        raise


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    running, url = start_service(tmp_path_factory.mktemp("page"), "--workers", "2")
    running.base_url = url
    yield running
    if running.process.poll() is None:
        running.interrupt()


@pytest.fixture(scope="module")
def service(running):
    return running.base_url


def photo_folder(images: Path, name: str, count: int, size: tuple[int, int], **broken: int) -> str:
    """A folder of `count` hard links to one JPEG of `size` (photo-0000.jpg, ...), and for each stem=index
    in `broken` a text file named like a photo, photo-<index>-<stem>.jpg, which sorts just before
    photo-<index>.jpg. Returns the folder's path under the images root."""
    folder = images / name
    folder.mkdir()
    first = folder / "photo-0000.jpg"
    PILImage.open(TESTDATA / "castle_image.jpg").convert("RGB").resize(size).save(first, quality=90)
    for number in range(1, count):
        os.link(first, folder / f"photo-{number:04}.jpg")
    for stem, index in broken.items():
        (folder / f"photo-{index:04}-{stem}.jpg").write_text("Not a photo at all.\n")
    return name


@pytest.fixture(scope="module")
def slow_folder(running) -> str:
    return photo_folder(running.images, "slow", SLOW_IMAGES, (1000, 600))


@pytest.fixture(scope="module")
def many_folder(running) -> str:
    return photo_folder(running.images, "many", MANY_IMAGES - 1, (160, 120), notes=149)  # entry 149 fails


@pytest.fixture(scope="module")
def huge_folder(running) -> str:
    return photo_folder(running.images, "huge", HUGE_IMAGES - 2, (32, 24), notes=4999, memo=9000)


def api_json(url: str, method: str = "GET") -> tuple[int, dict]:
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=40) as answer:
            return answer.status, json.load(answer)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


@pytest.fixture(scope="module")
def browser():
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=LAUNCH_ARGS)
        yield launched
        launched.close()


class Recorder:
    """Every request the page makes, so a test can check none leaves the service."""

    def __init__(self, page: Page, origin: str):
        self.origin = origin
        self.requests = []
        page.on("request", lambda request: self.requests.append(request))

    def foreign(self) -> list[str]:
        return [
            request.url
            for request in self.requests
            if not request.url.startswith(self.origin + "/") and not request.url.startswith(f"blob:{self.origin}/")
        ]

    def posts(self, path: str) -> list:
        return [
            request
            for request in self.requests
            if request.method == "POST" and request.url.startswith(self.origin + path)
        ]


def open_page(browser, url: str, **context_options) -> tuple[Page, Recorder]:
    context = browser.new_context(**{"viewport": {"width": 1280, "height": 900}, **context_options})
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda error: errors.append(error))
    page.errors = errors
    recorder = Recorder(page, url.rstrip("/"))
    page.goto(url)
    expect(page.locator("html[data-ready=true]")).to_have_count(1)
    return page, recorder


@pytest.fixture
def page(browser, service):
    """A fresh browser context (empty storage) on the page; at the end, no request went anywhere but the service."""
    opened, recorder = open_page(browser, service)
    opened.recorder = recorder
    yield opened
    assert recorder.foreign() == [], "the page requested something from another host"
    assert opened.errors == [], f"JavaScript errors: {opened.errors}"
    opened.context.close()


def shot(page: Page, name: str) -> Path:
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def choose(page: Page, group: str, value: str) -> None:
    page.locator(f'input[name="{group}"][value="{value}"]').check()


def newest_job(page: Page, status: str = "finished"):
    job = page.locator(".job").first
    expect(job).to_have_attribute("data-status", status, timeout=JOB_TIMEOUT)
    return job


def image_loaded(page: Page, selector: str) -> None:
    page.wait_for_function(
        "selector => { const img = document.querySelector(selector); "
        "return img && img.complete && img.naturalWidth > 0; }",
        arg=selector,
        timeout=15_000,
    )


def tab_to(page: Page, selector: str, presses: int = 30) -> None:
    for _ in range(presses):
        page.keyboard.press("Tab")
        if page.evaluate("selector => document.activeElement?.matches(selector)", selector):
            return
    raise AssertionError(f"Tab never reached {selector}")


DROP = """([name, b64]) => {
    const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
    const data = new DataTransfer();
    data.items.add(new File([bytes], name, {type: "image/jpeg"}));
    const zone = document.getElementById("dropzone");
    for (const type of ["dragenter", "dragover", "drop"]) {
        zone.dispatchEvent(new DragEvent(type, {dataTransfer: data, bubbles: true, cancelable: true}));
    }
}"""


def test_two_uploaded_photos_resized_show_two_thumbnails(page):
    page.set_input_files("#file-input", str(TESTDATA / "jemma.png"))  # one picked
    castle = base64.b64encode((TESTDATA / "castle_image.jpg").read_bytes()).decode()
    page.evaluate(DROP, ["castle_image.jpg", castle])  # and one dropped
    expect(page.locator("#picked-summary")).to_contain_text("2 files chosen")
    page.fill("#width", "120")
    page.fill("#height", "90")
    page.click("#submit")
    job = newest_job(page)
    expect(job.locator(".job-title")).to_have_text("Thumbnail 120 × 90 (contain) of 2 uploaded files")
    # Changed with the grid: a resize batch shows a grid of tiles (name, size, thumbnail) where it had a
    # table of rows, and a tile's thumbnail comes from /images/file?path=<its result path>.
    tiles = job.locator(".thumb-grid .tile")
    expect(tiles).to_have_count(2)
    names = tiles.locator(".tile-name").all_inner_texts()
    assert sorted(names) == ["castle_image.jpg", "jemma.png"]
    for size in tiles.locator(".tile-size").all_inner_texts():  # contain: inside the box, touching it
        width, height = map(int, re.fullmatch(r"(\d+) × (\d+) · \w+", size).groups())
        assert width <= 120 and height <= 90 and (width == 120 or height == 90)
    expect(job.locator(".progress-text")).to_have_text("2 of 2 images")
    thumbnails = job.locator(".tile img")
    expect(thumbnails).to_have_count(2)
    page.wait_for_function(  # both drawn
        "() => [...document.querySelectorAll('.job .tile img')]"
        ".filter(i => i.complete && i.naturalWidth > 0).length >= 2",
        timeout=15_000,
    )
    assert all(
        link.startswith("blob:") for link in tiles.locator("a.tile-name").evaluate_all("a => a.map(l => l.href)")
    )
    shot(page, "uploads-resized")


def test_keyboard_alone_picks_a_file_submits_it_and_gets_the_thumbnail(page):
    # Playwright turns on file-chooser interception without waiting for it: turn it on well before Enter
    page.on("filechooser", lambda chooser: None)
    tab_to(page, "#dropzone")
    with page.expect_file_chooser() as chooser:
        page.keyboard.press("Enter")
    chooser.value.set_files(str(TESTDATA / "jemma.png"))
    expect(page.locator("#picked-list")).to_contain_text("jemma.png")
    tab_to(page, "#submit")
    page.keyboard.press("Enter")
    job = newest_job(page)
    image_loaded(page, ".job figure.thumbnail img")
    link = job.locator("a.download")
    expect(link).to_have_attribute("download", "jemma_resized.png")
    assert link.get_attribute("href").startswith("blob:")
    assert job.locator("figcaption").inner_text().startswith("75 × 100 px · PNG")
    expect(page.locator("#announcer")).to_contain_text("finished")
    shot(page, "keyboard-thumbnail")


def test_the_folder_picker_sets_the_services_own_folders_apart(page, running):
    """resized/, uploads/ and downloads/ were listed among the user's folders, so a thumbnail of thumbnails was
    one click away; they now come last, under a heading of their own, and the user's folders first."""
    (running.images / "resized").mkdir(exist_ok=True)
    (running.images / "uploads").mkdir(exist_ok=True)
    choose(page, "source", "path")
    page.get_by_role("button", name="Browse").click()
    entries = page.locator("#browser-entries li")
    expect(page.locator("#browser-entries .outputs-heading")).to_have_text(
        "Made by the service (thumbnails, uploads, downloads):"
    )
    texts = entries.all_inner_texts()
    heading = texts.index("Made by the service (thumbnails, uploads, downloads):")
    assert texts[heading + 1 :] == ["resized/", "uploads/"] and "batch/" in texts[:heading], texts
    shot(page, "folder-picker")


def test_an_ended_job_can_be_redone_from_the_page(page, service):
    """There was no way to redo a job from the page: submitted again, a folder reused every earlier result.
    Redo sends the same request with force=true: a new job whose every image is worked again."""
    choose(page, "source", "path")
    page.fill("#image-path", "batch")
    page.click("#submit")
    first = newest_job(page)
    first_id = first.get_attribute("data-job-id")
    redo = first.get_by_role("button", name=re.compile("^Redo"))
    expect(redo).to_be_visible()
    redo.click()
    again = page.locator(".job").first
    expect(again).not_to_have_attribute("data-job-id", first_id)
    expect(again).to_have_attribute("data-status", "finished", timeout=JOB_TIMEOUT)
    expect(again.locator(".job-meta")).to_contain_text("redone: every image again")
    answer = api_json(f"{service}result/{again.get_attribute('data-job-id')}")[1]
    assert answer["status"] == "finished" and not any(entry.get("reused") for entry in answer["result"]["images"])


def test_a_folder_batch_reaches_its_total_and_the_text_file_fails_alone(page):
    choose(page, "source", "path")
    page.get_by_role("button", name="Folder batch: open and choose it").click()
    expect(page.locator("#image-path")).to_have_value("batch")
    expect(page.locator("#browser-entries .entry.image")).to_have_count(7)
    page.click("#submit")
    job = newest_job(page)
    progress = job.locator("progress")
    expect(progress).to_have_attribute("max", "7")
    assert progress.evaluate("bar => bar.value") == 7
    expect(job.locator(".progress-text")).to_have_text("7 of 7 images (1 failed)")
    expect(job.locator(".batch-summary")).to_have_text("7 images: 6 done, 1 failed.")
    # Changed with the grid: the entries are tiles of a grid, not rows of a table
    failed = job.locator(".tile.failed")
    expect(failed).to_have_count(1)
    expect(failed.locator(".tile-name")).to_have_text("notes.jpg")
    expect(failed).to_contain_text("not an image")
    expect(job.locator(".tile:not(.failed)")).to_have_count(6)
    # Watched by long-polls that end with the job, not by polling at an interval. Changed with progress as
    # it happens: each poll carries seen=<count shown> and is answered as the count moves, so a batch takes
    # a poll per step it is seen to make (this one: a few), not at most 3 that each wait for its end.
    job_id = job.get_attribute("data-job-id")
    polls = [request.url for request in page.recorder.requests if f"/result/{job_id}?" in request.url]
    assert 1 <= len(polls) <= 8 and all(re.search(r"\?wait=25&seen=\d+$", url) for url in polls), polls
    shot(page, "folder-batch")
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(ARTIFACTS / "page.png"))


def test_classifying_the_castle_says_castle(page):
    choose(page, "source", "path")
    page.get_by_role("button", name="Image castle_image.jpg: choose it").click()
    expect(page.locator("#image-path")).to_have_value("castle_image.jpg")
    choose(page, "action", "classify")
    page.fill("#top", "3")
    page.click("#submit")
    job = newest_job(page)
    labels = job.locator(".predictions .pred-label")
    expect(labels).to_have_count(3)
    expect(labels.first).to_have_text("castle")
    assert float(job.locator(".predictions .score").first.inner_text().rstrip(" %")) > 30
    expect(job.locator(".classification")).to_contain_text("efficientnet-lite0")
    # the picture beside its labels (there was none)
    picture = job.locator(".classification img.classified")
    expect(picture).to_have_attribute("alt", "The classified image, castle_image.jpg")
    image_loaded(page, ".job .classification img.classified")
    shot(page, "classify")


def test_a_classified_upload_shows_the_picture_it_sent(page):
    """A classified upload showed its labels alone (the page named no picture but a path's). Tried: jemma.png
    uploaded, classify. Got: "beagle", and beside it the picture the page sent (from the picked file), drawn."""
    choose(page, "source", "upload")
    page.set_input_files("#file-input", str(TESTDATA / "jemma.png"))
    choose(page, "action", "classify")
    page.click("#submit")
    job = newest_job(page)
    expect(job.locator(".predictions .pred-label").first).to_have_text("beagle")
    expect(job.locator(".classification img.classified")).to_have_attribute("alt", "The classified image, jemma.png")
    image_loaded(page, ".job .classification img.classified")
    assert job.locator(".classification img.classified").evaluate("img => img.naturalWidth") == 375
    shot(page, "classify-upload")


def test_duplicates_show_each_group_side_by_side(page, running):
    """A duplicates batch: the castle photo, a third of its size and a crop of it, and the beagle alone. Got:
    one group drawn with its three pictures side by side (each fetched and drawn), the first marked as such and
    the others with their distance in bits; the beagle in no group; the table of hashes below."""
    folder = running.images / "dups"
    folder.mkdir()
    with PILImage.open(TESTDATA / "castle_image.jpg") as castle:
        castle.save(folder / "castle.jpg")
        castle.resize((266, 160)).save(folder / "castle-small.png")
        castle.crop((40, 24, 760, 456)).save(folder / "castle-crop.jpg")
    (folder / "jemma.png").write_bytes((TESTDATA / "jemma.png").read_bytes())
    job = submit_folder(page, "dups", action="duplicates")
    expect(job).to_have_attribute("data-status", "finished", timeout=JOB_TIMEOUT)
    groups = job.locator(".duplicate-groups .group")
    expect(groups).to_have_count(1)
    expect(groups.first.locator("figure.member")).to_have_count(3)
    expect(groups.first.locator("figcaption").first).to_contain_text("the first")
    expect(groups.first).to_contain_text("bits apart")
    expect(groups.first).not_to_contain_text("jemma.png")
    image_loaded(page, ".duplicate-groups img.member-picture")
    expect(job.locator("table.results.hashes tbody tr")).to_have_count(4)
    shot(page, "duplicates")


def test_a_group_of_many_copies_draws_a_dozen_and_says_how_many_more(page, running):
    """Every plain, one-colour image has the same perceptual hash, so a folder of blank scans is one group of
    thousands, and each member drawn is a fetch of the image itself. Tried: 15 blank PNGs. Got: one group with
    12 pictures and "and 3 more", only 12 images fetched; the table below lists all 15."""
    folder = running.images / "blanks"
    folder.mkdir()
    for index in range(15):
        PILImage.new("RGB", (64, 48), (250, 250, 250)).save(folder / f"scan-{index:02d}.png")
    job = submit_folder(page, "blanks", action="duplicates")
    expect(job).to_have_attribute("data-status", "finished", timeout=JOB_TIMEOUT)
    group = job.locator(".duplicate-groups .group")
    expect(group).to_have_count(1)
    expect(group.locator("figure.member")).to_have_count(12)
    expect(group.locator(".more-members")).to_have_text("and 3 more (in the table below)")
    expect(job.locator("table.results.hashes tbody tr")).to_have_count(15)
    image_loaded(page, ".duplicate-groups img.member-picture")
    fetched = [request.url for request in page.recorder.requests if "/images/file?path=blanks" in request.url]
    assert len(fetched) == 12, fetched


def test_a_histogram_plot_shows_the_chart(page):
    choose(page, "source", "path")
    page.fill("#image-path", "castle_image.jpg")
    choose(page, "action", "plot")
    page.select_option("#kind", "histogram")
    page.click("#submit")
    job = newest_job(page)
    image_loaded(page, ".job figure.plot img")
    assert job.locator("figure.plot img").evaluate("img => img.naturalWidth") == 1000
    expect(job.locator("a.download")).to_have_attribute("download", re.compile(r"^plot-[0-9a-f]+\.png$"))
    shot(page, "histogram")


def test_invalid_values_are_stopped_in_the_page_and_the_api_refusal_is_shown(page):
    choose(page, "source", "path")
    page.fill("#image-path", "castle_image.jpg")
    page.fill("#width", "5000")
    page.click("#submit")
    expect(page.locator("#width-error")).to_have_text("Width must be a whole number of pixels from 1 to 4096.")
    expect(page.locator("#form-error")).to_contain_text("Width must be a whole number")
    expect(page.locator("#width")).to_be_focused()
    expect(page.locator("#width")).to_have_attribute("aria-invalid", "true")
    assert page.recorder.posts("/imageapi") == []
    shot(page, "invalid-width")

    # the same value sent anyway (constraints removed): the API's sentence appears by the form
    page.evaluate("document.getElementById('width').removeAttribute('max')")
    page.click("#submit")
    expect(page.locator("#form-error")).to_contain_text("Invalid parameter width")
    assert len(page.recorder.posts("/imageapi")) == 1

    page.fill("#width", "100")
    page.fill("#image-path", "../etc")
    page.click("#submit")
    expect(page.locator("#form-error")).to_contain_text("outside the images root")
    page.click("#browse-go")
    expect(page.locator("#browser-error")).to_contain_text("outside the images root")
    expect(page.locator(".job")).to_have_count(0)
    shot(page, "outside-root")


def test_crop_placement_is_offered_with_cover_and_sent(page):
    """Tried: the thumbnail options with fit contain, then cover; a focus that is not two fractions; then
    gravity smart. Got: "Crop at" and "Focus x,y" hidden (and not sent) until fit is cover; the API's sentence
    about focus shown by the form; a smart cover of the castle made and drawn, its request carrying
    gravity=smart and no focus."""
    choose(page, "source", "path")
    page.fill("#image-path", "castle_image.jpg")
    expect(page.locator("#gravity")).to_be_hidden()
    expect(page.locator("#focus")).to_be_hidden()
    page.select_option("#fit", "cover")
    expect(page.locator("#gravity")).to_be_visible()
    page.fill("#focus", "left")
    page.click("#submit")
    expect(page.locator("#form-error")).to_contain_text("focus is x,y: two fractions from 0 to 1")
    page.fill("#focus", "")
    page.select_option("#gravity", "smart")
    page.click("#submit")
    job = newest_job(page)
    image_loaded(page, ".job img")
    sent = json.loads(page.recorder.posts("/imageapi")[-1].post_data)
    assert sent["fit"] == "cover" and sent["gravity"] == "smart" and "focus" not in sent
    expect(job.locator(".job-title")).to_contain_text("(cover)")
    page.select_option("#fit", "contain")
    expect(page.locator("#gravity")).to_be_hidden()


def test_reload_keeps_the_jobs_and_an_expired_one_says_so(page):
    old = {
        "id": "0" * 32,
        "action": "size",
        "title": "Size of an old photo",
        "subject": "old.jpg",
        "detail": "",
        "submitted": "2020-01-01T00:00:00Z",
    }
    page.evaluate("job => localStorage.setItem('imageapi.jobs', JSON.stringify([job]))", old)
    choose(page, "source", "path")
    page.fill("#image-path", "castle_image.jpg")
    choose(page, "action", "size")
    page.click("#submit")
    newest_job(page)
    page.reload()
    expect(page.locator(".job")).to_have_count(2)
    fresh = page.locator(".job").first
    expect(fresh.locator(".job-title")).to_have_text("Size of castle_image.jpg")
    expect(fresh).to_have_attribute("data-status", "finished", timeout=JOB_TIMEOUT)
    expect(fresh.locator("table.results tbody td").first).to_have_text("800 × 480")
    expired = page.locator(f'.job[data-job-id="{old["id"]}"]')
    expect(expired).to_have_attribute("data-status", "expired")
    expect(expired.locator(".badge")).to_have_text("Expired")
    expect(expired).not_to_contain_text("rror")
    shot(page, "after-reload")


def test_a_375_px_wide_screen_has_no_horizontal_scroll(browser, service, many_folder, slow_folder):
    page, recorder = open_page(browser, service, viewport={"width": 375, "height": 800}, is_mobile=True, has_touch=True)

    def fits() -> None:
        widths = page.evaluate("[document.documentElement.scrollWidth, document.documentElement.clientWidth]")
        assert widths[0] <= widths[1] == 375, widths

    try:
        choose(page, "source", "path")
        page.get_by_role("button", name="Folder batch: open and choose it").click()
        choose(page, "action", "classify")
        page.click("#submit")
        job = newest_job(page)
        expect(job.locator("tbody tr")).to_have_count(7)
        fits()
        shot(page, "narrow-375")
        # a large batch's grid, its filter and its pager
        job = submit_folder(page, many_folder, width="80", height="80")
        page.evaluate("window.scrollTo(0, 0)")  # where the click left the page varies: the grid below the form
        expect(job).to_have_attribute("data-status", "finished", timeout=JOB_TIMEOUT)
        expect(job.locator(".thumb-grid .tile")).to_have_count(PAGE_SIZE)
        # Fetched only as they come into view: none of the grid's last rows, at most a screen's worth in all.
        assert job.locator(".tile").nth(PAGE_SIZE - 1).locator("img").count() == 0
        assert job.locator(".tile img").count() <= 12
        job.locator(".tile").first.scroll_into_view_if_needed()
        image_loaded(page, ".job .tile img")
        fits()
        job.locator("nav.pager").first.scroll_into_view_if_needed()
        page.screenshot(path=str(ARTIFACTS / "narrow-375-grid.png"))
        # a running batch: its bar, count, rate and Cancel
        job = submit_folder(page, slow_folder, width="520", height="520")  # sizes of its own: nothing reused
        expect(job.locator(".progress-rate")).to_contain_text("images/s", timeout=JOB_TIMEOUT)
        fits()
        job.scroll_into_view_if_needed()
        page.screenshot(path=str(ARTIFACTS / "narrow-375-running.png"))
        job.get_by_role("button", name="Cancel").click()
        expect(job).to_have_attribute("data-status", "canceled")
        fits()
        assert recorder.foreign() == [] and page.errors == []
    finally:
        page.context.close()


def test_a_401_asks_once_for_a_token_and_every_call_then_carries_it(browser, tmp_path):
    running, url = start_service(
        tmp_path, "--workers", "1", "--no-classifier", env={"API_TOKENS": "s3cret-token", "BIND_HOST": "127.0.0.1"}
    )
    try:
        page, recorder = open_page(browser, url)
        page.set_input_files("#file-input", str(TESTDATA / "jemma.png"))
        page.click("#submit")
        dialog = page.locator("#token-dialog")
        expect(dialog).to_be_visible()
        expect(page.locator("#token-input")).to_be_focused()
        shot(page, "token-dialog")
        page.fill("#token-input", "s3cret-token")
        page.keyboard.press("Enter")
        expect(dialog).to_be_hidden()
        newest_job(page)
        image_loaded(page, ".job figure.thumbnail img")
        expect(page.locator("#token-state")).to_be_visible()
        assert page.evaluate("sessionStorage.getItem('imageapi.token')") == "s3cret-token"
        calls = [request for request in recorder.requests if re.search(r"/(imageapi|result|images)\b", request.url)]
        refused, *after = calls
        assert refused.method == "POST" and "authorization" not in refused.headers
        assert after and all(request.headers.get("authorization") == "Bearer s3cret-token" for request in after)
        assert any("/result/file" in request.url for request in after)
        assert recorder.foreign() == [] and page.errors == []
        shot(page, "token-thumbnail")
        page.context.close()
    finally:
        if running.process.poll() is None:
            running.interrupt()


# --- progress as it happens, cancel, zips, large batches ------------------------------------------------------

READ_ROW = """job => ({
    status: job.dataset.status,
    value: job.querySelector(".job-progress progress")?.value ?? null,
    text: job.querySelector(".progress-text")?.textContent ?? "",
    rate: job.querySelector(".progress-rate")?.textContent ?? "",
})"""


def settled(service: str, job_id: str, within: float = 10) -> dict:
    """A canceled batch's answer once its progress has held still for four of its workers' write intervals."""
    still = 4 * FLUSH_EVERY
    deadline = time.monotonic() + within
    _, answer = api_json(f"{service}result/{job_id}")
    while time.monotonic() < deadline:
        time.sleep(still)
        _, again = api_json(f"{service}result/{job_id}")
        if again["progress"] == answer["progress"]:
            return again
        answer = again
    raise AssertionError(f"the progress of {job_id} was still moving after {within} s: {answer['progress']}")


def submit_folder(page: Page, folder: str, action: str = "resize", **options: str):
    choose(page, "source", "path")
    page.fill("#image-path", folder)
    choose(page, "action", action)
    for name, value in options.items():
        page.fill(f"#{name}", value)
    page.click("#submit")
    job = page.locator(".job").first
    expect(job).to_have_attribute("data-job-id", re.compile(r"^[0-9a-f]{32}$"))
    return job


def test_a_500_image_batch_shows_its_bar_move_with_rate_and_time_left(page, service, slow_folder):
    job = submit_folder(page, slow_folder, width="540", height="540")
    job_id = job.get_attribute("data-job-id")
    expect(job.locator(".badge")).to_have_text("Running", timeout=JOB_TIMEOUT)  # once its first image is done
    seen, rates, changes = [], [], []  # progress values while it ran; rate texts; when each value was first read
    shot_taken = False
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        row = job.evaluate(READ_ROW)
        if row["status"] != "started":
            break
        if row["value"] is not None and (not seen or row["value"] != seen[-1]):
            seen.append(row["value"])
            changes.append(time.monotonic())
            assert re.fullmatch(rf"{row['value']} of {SLOW_IMAGES} images", row["text"]), row
        if row["rate"]:
            rates.append(row["rate"])
            if not shot_taken and row["value"] >= 100:
                shot(page, "batch-progress")
                shot_taken = True
        page.wait_for_timeout(100)
    expect(job).to_have_attribute("data-status", "finished", timeout=JOB_TIMEOUT)
    moving = [value for value in seen if 0 < value < SLOW_IMAGES]
    assert len(set(moving)) >= 3, f"the bar was seen at {seen}"
    assert moving == sorted(moving), seen
    # shown within about a second of the workers' progress (they write theirs every quarter of a second)
    gaps = [later - earlier for earlier, later in zip(changes, changes[1:])]
    assert max(gaps, default=0) < 2.5, gaps
    assert rates and all(
        re.fullmatch(r"[\d.]+ images?/s( · about (\d+ h )?(\d+ min )?(\d+ s )?left)?", r) for r in rates
    )
    assert any("left" in rate for rate in rates), rates
    expect(job.locator(".progress-rate")).to_be_hidden()  # ended: no rate, no Cancel
    expect(job.locator("button.cancel")).to_be_hidden()
    expect(job.locator(".progress-text")).to_have_text(f"{SLOW_IMAGES} of {SLOW_IMAGES} images")
    # the polls went with the count shown, and were answered as it moved: one a step, not one an image
    polls = [request.url for request in page.recorder.requests if f"/result/{job_id}?" in request.url]
    shown = [int(re.search(r"seen=(\d+)", url).group(1)) for url in polls]
    assert len(polls) < SLOW_IMAGES / 5 and shown[0] == 0 and shown == sorted(shown), polls
    expect(job.locator(".thumb-grid .tile")).to_have_count(PAGE_SIZE)
    expect(job.locator(".pager-status").first).to_have_text(f"Page 1 of {SLOW_IMAGES // PAGE_SIZE}")
    shot(page, "batch-500-finished")


def test_cancel_stops_a_running_batch_and_keeps_what_it_made(page, service, slow_folder):
    job = submit_folder(page, slow_folder, width="560", height="560")  # sizes of its own: nothing reused
    job_id = job.get_attribute("data-job-id")
    title = job.locator(".job-title").inner_text()
    cancel = page.get_by_role("button", name=f"Cancel “{title}”")
    expect(cancel).to_be_visible()  # queued or running, it can be canceled
    page.wait_for_function(
        "job => (job.querySelector('.job-progress progress')?.value ?? 0) >= 40",
        arg=job.element_handle(),
        timeout=30_000,
    )
    shot(page, "cancel-running")
    cancel.click()
    expect(job).to_have_attribute("data-status", "canceled")
    expect(job.locator(".badge")).to_have_text("Canceled")
    expect(cancel).to_be_hidden()
    expect(job.locator(".job-title")).to_be_focused()  # the button went: the focus stays on its job
    expect(page.locator("#announcer")).to_contain_text(f"{title}: canceled.")
    # the API agrees. Each chunk still writes what it had done by the cancel (it writes every FLUSH_EVERY
    # seconds), so the count may rise once more: wait until it holds still, then the page shows that count
    status, answer = api_json(f"{service}result/{job_id}")
    assert status == 200 and answer["status"] == "canceled", answer
    answer = settled(service, job_id)
    handled = answer["progress"]["done"] + answer["progress"]["failed"]
    deadline = time.monotonic() + 10
    while job.evaluate(READ_ROW)["value"] != handled and time.monotonic() < deadline:
        page.wait_for_timeout(250)
    assert job.evaluate(READ_ROW)["value"] == handled < SLOW_IMAGES, (handled, answer["progress"])
    page.wait_for_timeout(1500)
    assert job.evaluate(READ_ROW)["value"] == handled
    assert api_json(f"{service}result/{job_id}")[1]["progress"] == answer["progress"]  # the workers stopped
    assert len(answer["result"]["images"]) == handled
    expect(job.locator(".progress-text")).to_have_text(f"{handled} of {SLOW_IMAGES} images")
    # what it made is shown like a finished batch's: a grid, a page at a time
    expect(job.locator(".batch-summary")).to_have_text(
        f"Canceled after {handled} of {SLOW_IMAGES} images: {handled} done."
    )
    expect(job.locator(".thumb-grid .tile")).to_have_count(min(handled, PAGE_SIZE))
    image_loaded(page, ".job .tile img")
    # the zip of what it made (the button was hidden for a canceled batch, though the API served its zip)
    expect(job.locator(".batch-actions")).to_contain_text(f"{handled} thumbnails, as {job_id}.zip")
    with page.expect_download() as got:
        job.get_by_role("button", name="Download all (zip)").click()
    with zipfile.ZipFile(got.value.path()) as archive:
        assert len(archive.namelist()) == handled
    shot(page, "batch-canceled")
    # canceling it again: 409, the page shows nothing new; and after a reload it comes back the same
    assert api_json(f"{service}result/{job_id}", "DELETE")[0] == 409
    page.reload()
    job = page.locator(f'.job[data-job-id="{job_id}"]')
    expect(job).to_have_attribute("data-status", "canceled")
    expect(job.locator(".progress-text")).to_have_text(f"{handled} of {SLOW_IMAGES} images")
    expect(job.locator(".batch-summary")).to_contain_text(f"Canceled after {handled} of {SLOW_IMAGES} images")
    expect(job.locator(".thumb-grid .tile")).to_have_count(min(handled, PAGE_SIZE))
    shot(page, "batch-canceled-reloaded")


def test_a_finished_batch_downloads_as_one_zip_of_its_thumbnails(page):
    choose(page, "source", "path")
    page.get_by_role("button", name="Folder batch: open and choose it").click()
    page.click("#submit")
    job = newest_job(page)
    job_id = job.get_attribute("data-job-id")
    button = job.get_by_role("button", name="Download all (zip)")
    expect(job.locator(".batch-actions")).to_contain_text(f"6 thumbnails, as {job_id}.zip")
    with page.expect_download() as downloading:
        button.click()
    download = downloading.value
    assert download.suggested_filename == f"{job_id}.zip"
    with zipfile.ZipFile(download.path()) as archive:
        names = sorted(archive.namelist())
        expected = sorted(
            f"batch/{number + 1}-{Path(name).stem}_resized{Path(name).suffix}"
            for number, name in enumerate(SAMPLES[n % 3] for n in range(6))
        )
        assert names == expected
        for name in names:
            with PILImage.open(io.BytesIO(archive.read(name))) as thumbnail:
                assert max(thumbnail.size) == 100
    expect(job.locator(".batch-actions")).to_contain_text(f"saved as {job_id}.zip")
    zips = [request for request in page.recorder.requests if request.url.endswith(f"/result/file?jobId={job_id}")]
    assert len(zips) == 1  # fetched once, with the token if there is one, and saved as a blob
    shot(page, "batch-zip")


def test_a_large_batch_is_a_paged_grid_whose_thumbnails_load_as_they_scroll_into_view(page, many_folder):
    job = submit_folder(page, many_folder, width="80", height="80")
    expect(job).to_have_attribute("data-status", "finished", timeout=JOB_TIMEOUT)
    tiles = job.locator(".thumb-grid .tile")
    expect(tiles).to_have_count(PAGE_SIZE)  # of 300: one page in the DOM, never all
    assert page.locator(".tile").count() == PAGE_SIZE
    pager = job.locator("nav.pager").first
    expect(pager.locator(".pager-status")).to_have_text("Page 1 of 3")
    expect(pager.locator(".pager-range")).to_have_text("thumbnails 1–100 of 300")
    expect(job.locator(".batch-summary")).to_have_text("300 images: 299 done, 1 failed.")

    def fetched() -> int:
        return len(
            [request for request in page.recorder.requests if re.search(r"/(images|result)/file\?", request.url)]
        )

    def settled() -> int:
        """The thumbnails fetched, once every one fetched is drawn and no more come."""
        last = -1
        for _ in range(50):
            count = fetched()
            if count == last and job.locator(".tile img").count() == count:
                return count
            last = count
            page.wait_for_timeout(200)
        raise AssertionError(f"thumbnails kept coming: {count}")

    image_loaded(page, ".job .tile img")
    before = settled()
    assert 0 < before < PAGE_SIZE / 2, before  # only those in view (and just below it)
    # a tile not yet fetched shows its placeholder: the entry's BlurHash drawn, 32 px on its long side, scaled
    assert tiles.last.locator("img").count() == 0
    width, height, mean = tiles.last.locator("canvas.placeholder").evaluate(
        "c => { const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let sum = 0;"
        " for (let i = 0; i < d.length; i += 4) sum += d[i] + d[i + 1] + d[i + 2];"
        " return [c.width, c.height, sum / (d.length / 4) / 3]; }"
    )
    assert max(width, height) == 32 and 10 < mean < 245, (width, height, mean)
    assert job.locator(".tile:has(img) canvas").count() == 0  # a fetched thumbnail took its placeholder's place
    shot(page, "grid-page-1")
    tiles.last.scroll_into_view_if_needed()
    image_loaded(page, ".job .tile:last-child img")
    assert before < settled() <= PAGE_SIZE

    # the next page: the next 100 entries, the failed one among them
    pager.get_by_role("button", name="Next").click()
    expect(pager.locator(".pager-status")).to_have_text("Page 2 of 3")
    expect(pager.get_by_role("button", name="Next")).to_be_focused()
    expect(tiles).to_have_count(PAGE_SIZE)
    expect(tiles.first).to_have_attribute("data-index", "100")
    expect(tiles.first.locator(".tile-name")).to_have_text("photo-0100.jpg")
    expect(job.locator(".tile.failed .tile-name")).to_have_text("photo-0149-notes.jpg")
    expect(page.locator("#announcer")).to_contain_text("Page 2 of 3: thumbnails 101–200 of 300.")
    pager.get_by_role("button", name="Next").click()
    expect(pager.locator(".pager-status")).to_have_text("Page 3 of 3")
    expect(pager.get_by_role("button", name="Next")).to_be_disabled()
    expect(pager.get_by_role("button", name="Previous")).to_be_focused()  # Next went disabled
    expect(tiles.last.locator(".tile-name")).to_have_text("photo-0298.jpg")

    # the failures, found at once
    job.get_by_label("Failed only (1)").check()
    expect(tiles).to_have_count(1)
    expect(tiles.first).to_contain_text("photo-0149-notes.jpg")
    expect(tiles.first).to_contain_text("not an image")
    expect(pager).to_be_hidden()
    shot(page, "grid-failed-only")
    job.get_by_label("All (300)").check()
    expect(pager.locator(".pager-status")).to_have_text("Page 1 of 3")


def test_a_batch_of_10000_entries_stays_one_page_in_the_dom(page, huge_folder):
    job = submit_folder(page, huge_folder, action="size")
    expect(job).to_have_attribute("data-status", "finished", timeout=120_000)
    rows = job.locator("table.results tbody tr")
    expect(rows).to_have_count(PAGE_SIZE)
    expect(job.locator(".batch-summary")).to_have_text("10,000 images: 9,998 done, 2 failed.")
    pager = job.locator("nav.pager").first
    expect(pager.locator(".pager-status")).to_have_text("Page 1 of 100")
    pager.get_by_role("button", name="Last").click()
    expect(pager.locator(".pager-status")).to_have_text("Page 100 of 100")
    expect(rows.first.locator("th")).to_have_text("photo-9898.jpg")  # two failed entries before it
    # turning a page of a 10,000-entry batch is quick, and keeps one page in the DOM
    took = page.evaluate(
        """job => { const started = performance.now();
            job.querySelector("nav.pager [data-step=previous]").click();
            return performance.now() - started; }""",
        job.element_handle(),
    )
    assert took < 200, took
    expect(pager.locator(".pager-status")).to_have_text("Page 99 of 100")
    assert page.locator(".job tbody tr").count() == PAGE_SIZE
    job.get_by_label("Failed only (2)").check()
    expect(rows).to_have_count(2)
    assert rows.locator("th").all_inner_texts() == ["photo-4999-notes.jpg", "photo-9000-memo.jpg"]
    shot(page, "batch-10000-failed-only")
