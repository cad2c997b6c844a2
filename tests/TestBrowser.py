"""The web page in a real browser (Debian's Chromium, driven by Playwright) against `python run.py`.

Each state a test reaches is saved as a screenshot under test-artifacts/ (git-ignored); a finished
batch is also saved there as page.png, a candidate for the README's picture (docs/page.png, copied by hand).
"""

import base64
import re
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip("Debian's chromium is not installed (apt-get install chromium)", allow_module_level=True)

from playwright.sync_api import Page, expect, sync_playwright  # noqa: E402

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
def service(tmp_path_factory):
    running, url = start_service(tmp_path_factory.mktemp("page"), "--workers", "2")
    yield url
    if running.process.poll() is None:
        running.interrupt()


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
    rows = job.locator("table.results tbody tr")
    expect(rows).to_have_count(2)
    names = rows.locator("th").all_inner_texts()
    assert sorted(names) == ["castle_image.jpg", "jemma.png"]
    for size in rows.locator("td:nth-child(2)").all_inner_texts():  # contain: inside the box, touching it
        width, height = map(int, re.fullmatch(r"(\d+) × (\d+)", size).groups())
        assert width <= 120 and height <= 90 and (width == 120 or height == 90)
    expect(job.locator(".progress-text")).to_have_text("2 of 2 images")
    thumbnails = job.locator("img.entry-thumb")
    expect(thumbnails).to_have_count(2)
    page.wait_for_function(  # both drawn, each from /result/file?jobId=&index=
        "() => [...document.querySelectorAll('.job img.entry-thumb')]"
        ".filter(i => i.complete && i.naturalWidth > 0).length >= 2",
        timeout=15_000,
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
    failed = job.locator("tr.failed")
    expect(failed).to_have_count(1)
    expect(failed.locator("th")).to_have_text("notes.jpg")
    expect(failed).to_contain_text("not an image")
    expect(job.locator("tbody tr:not(.failed)")).to_have_count(6)
    # watched by long-polls that end with the job, not by polling at an interval
    job_id = job.get_attribute("data-job-id")
    polls = [request.url for request in page.recorder.requests if f"/result/{job_id}" in request.url]
    assert 1 <= len(polls) <= 3 and all(url.endswith("?wait=25") for url in polls), polls
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
    shot(page, "classify")


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


def test_a_375_px_wide_screen_has_no_horizontal_scroll(browser, service):
    page, recorder = open_page(browser, service, viewport={"width": 375, "height": 800}, is_mobile=True, has_touch=True)
    try:
        choose(page, "source", "path")
        page.get_by_role("button", name="Folder batch: open and choose it").click()
        choose(page, "action", "classify")
        page.click("#submit")
        job = newest_job(page)
        expect(job.locator("tbody tr")).to_have_count(7)
        widths = page.evaluate("[document.documentElement.scrollWidth, document.documentElement.clientWidth]")
        assert widths[0] <= widths[1] == 375, widths
        shot(page, "narrow-375")
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
