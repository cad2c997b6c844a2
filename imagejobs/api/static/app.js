// The page: a form that submits jobs, and a list of jobs watched live by long-polling /result/<jobId>?wait=25
// (for a batch, &seen=N: the answer comes as soon as its progress moves past N).
import { api, askToken, blobUrl, errorSentence, forgetToken, onTokenChange, readJson, saveFile, token, whenToken } from "./api.js";
import { imageNamePattern, loadCatalogue, optionsOf, renderActions, titleOf } from "./actions.js";
import { announce, formatBytes, h, icon, number, plural, sleep } from "./dom.js";
import { canceledView, rememberPicture, resultView } from "./results.js";

const $ = (id) => document.getElementById(id);
const form = $("job-form");
// What the service offers (GET /actions): the actions with their parameters, and its limits.
let catalogue = { default: "", actions: [], limits: { maxUrls: Infinity, imageExtensions: [] } };
let IMAGE_NAME = /$^/;

// Announcements for screen readers: announce() (dom.js), through #announcer.

// ---- choosing the images and the work ----------------------------------------------------------------

function choice(name) {
  return form.querySelector(`input[name="${name}"]:checked`).value;
}

function showChosen(selector, attribute, value) {
  for (const fieldset of form.querySelectorAll(selector)) {
    const active = fieldset.dataset[attribute] === value;
    fieldset.hidden = !active;
    fieldset.disabled = !active; // a disabled fieldset's fields are neither validated nor sent
  }
}

let browsed = false;
function sourceChanged() {
  const source = choice("source");
  showChosen(".source-panel", "source", source);
  clearErrors();
  if (source === "path" && !browsed) {
    browsed = true;
    browse(".", false);
  }
}

function actionChanged() {
  showChosen(".options", "action", choice("action"));
  clearErrors();
}

form.querySelectorAll('input[name="source"]').forEach((radio) => radio.addEventListener("change", sourceChanged));
$("action-list").addEventListener("change", actionChanged);

// ---- uploads: the file picker, drag and drop ---------------------------------------------------------

let picked = [];
const fileInput = $("file-input");
const dropzone = $("dropzone");

function addFiles(files) {
  const known = new Set(picked.map((file) => `${file.name}/${file.size}/${file.lastModified}`));
  for (const file of files) {
    const key = `${file.name}/${file.size}/${file.lastModified}`;
    if (!known.has(key)) {
      picked.push(file);
      known.add(key);
    }
  }
  renderPicked();
  if (picked.length) hideFieldError("files-error", dropzone);
}

function renderPicked() {
  const list = $("picked-list");
  list.replaceChildren();
  $("picked").hidden = picked.length === 0;
  const bytes = picked.reduce((sum, file) => sum + file.size, 0);
  $("picked-summary").textContent = `${plural(picked.length, "file")} chosen (${formatBytes(bytes)})`
    + (picked.length > 1 ? ": one batch." : ".");
  picked.slice(0, 50).forEach((file, index) => {
    list.append(h("li", {},
      h("span", { class: "picked-name", text: file.name }),
      h("span", { class: "picked-size", text: formatBytes(file.size) }),
      h("button", {
        type: "button", class: "link", text: "Remove", "aria-label": `Remove ${file.name}`,
        onclick: () => {
          picked.splice(index, 1);
          renderPicked();
          (list.querySelector("button") || dropzone).focus();
        },
      })));
  });
  if (picked.length > 50) list.append(h("li", { class: "hint", text: `and ${picked.length - 50} more` }));
}

dropzone.addEventListener("click", () => fileInput.click());
fileInput.addEventListener("change", () => {
  addFiles([...fileInput.files]);
  fileInput.value = "";
});
$("picked-clear").addEventListener("click", () => {
  picked = [];
  renderPicked();
  dropzone.focus();
});

/** The files a drop carries, folders walked (only image names kept from folders). */
async function droppedFiles(dataTransfer) {
  const entries = [...(dataTransfer.items || [])].map((item) => item.webkitGetAsEntry?.()).filter(Boolean);
  if (!entries.length || entries.every((entry) => entry.isFile)) return [...dataTransfer.files];
  const files = [];
  const walk = async (entry, top) => {
    if (entry.isFile) {
      const file = await new Promise((resolve, reject) => entry.file(resolve, reject));
      if (top || IMAGE_NAME.test(file.name)) files.push(file);
    } else if (entry.isDirectory) {
      const reader = entry.createReader();
      for (;;) {
        const batch = await new Promise((resolve, reject) => reader.readEntries(resolve, reject));
        if (!batch.length) break;
        for (const child of batch) await walk(child, false);
      }
    }
  };
  for (const entry of entries) await walk(entry, true);
  return files;
}

let dragDepth = 0;
const carriesFiles = (event) => [...(event.dataTransfer?.types || [])].includes("Files");
window.addEventListener("dragenter", (event) => {
  if (!carriesFiles(event)) return;
  dragDepth += 1;
  dropzone.classList.add("dragging");
});
window.addEventListener("dragleave", () => {
  dragDepth = Math.max(0, dragDepth - 1);
  if (!dragDepth) dropzone.classList.remove("dragging");
});
window.addEventListener("dragover", (event) => {
  if (carriesFiles(event)) event.preventDefault();
});
window.addEventListener("drop", async (event) => {
  if (!carriesFiles(event)) return;
  event.preventDefault(); // anywhere on the page: never let the browser open the file instead
  dragDepth = 0;
  dropzone.classList.remove("dragging");
  const files = await droppedFiles(event.dataTransfer);
  if (!files.length) return;
  form.querySelector('input[name="source"][value="upload"]').checked = true;
  sourceChanged();
  addFiles(files);
  announce(`${plural(files.length, "file")} added; ${plural(picked.length, "file")} chosen.`);
});

// ---- the folder browser: GET /images?path= ---------------------------------------------------------

const pathInput = $("image-path");
let browserPath = ".";

const joinPath = (folder, name) => (folder === "." ? name : `${folder}/${name}`);
const parentOf = (path) => (path.includes("/") ? path.slice(0, path.lastIndexOf("/")) : ".");

async function browse(path, focus = true) {
  const error = $("browser-error");
  let response;
  try {
    response = await api(`/images?path=${encodeURIComponent(path)}`);
  } catch (exc) {
    error.hidden = false;
    error.textContent = `The service did not answer (${exc.message}).`;
    return;
  }
  if (!response.ok) {
    error.hidden = false;
    error.textContent = await errorSentence(response);
    if (response.status === 401) tokenNeeded(true);
    return;
  }
  error.hidden = true;
  const listing = await readJson(response);
  browserPath = listing.path || ".";
  $("browser-where").textContent = browserPath === "." ? "(the images root)" : browserPath;
  $("browser-up").disabled = browserPath === ".";
  const entries = $("browser-entries");
  entries.replaceChildren();
  const outputs = listing.outputs || [];
  const folders = (listing.folders || []).filter((name) => !outputs.includes(name));
  const images = listing.images || [];
  const shown = 300;
  const folderEntry = (name) => {
    const target = joinPath(browserPath, name);
    return h("li", {}, h("button", {
      type: "button", class: "entry folder", "data-path": target, "aria-label": `Folder ${name}: open and choose it`,
      onclick: () => { choosePath(target); browse(target); },
    }, icon("folder"), h("span", { text: `${name}/` })));
  };
  for (const name of folders.slice(0, shown)) entries.append(folderEntry(name));
  for (const name of images.slice(0, Math.max(0, shown - folders.length))) {
    const target = joinPath(browserPath, name);
    entries.append(h("li", {}, h("button", {
      type: "button", class: "entry image", "data-path": target, "aria-pressed": String(pathInput.value === target),
      "aria-label": `Image ${name}: choose it`,
      onclick: () => choosePath(target),
    }, icon("image"), h("span", { text: name }))));
  }
  if (!folders.length && !images.length) entries.append(h("li", { class: "hint", text: "This folder holds no folders or images." }));
  if (outputs.length) {
    entries.append(h("li", { class: "hint outputs-heading", text: "Made by the service (thumbnails, uploads, downloads):" }));
    for (const name of outputs) entries.append(folderEntry(name));
  }
  const more = folders.length + images.length - shown;
  $("browser-more").hidden = more <= 0;
  $("browser-more").textContent = more > 0 ? `and ${more} more: type the path above.` : "";
  if (focus) $("browser-heading").focus();
}

function choosePath(path) {
  pathInput.value = path;
  hideFieldError("image-path-error", pathInput);
  for (const button of $("browser-entries").querySelectorAll(".entry.image")) {
    button.setAttribute("aria-pressed", String(button.dataset.path === path));
  }
}

$("browse-go").addEventListener("click", () => {
  const typed = pathInput.value.trim().replace(/\/+$/, "") || ".";
  browse(IMAGE_NAME.test(typed) ? parentOf(typed) : typed);
});
$("browser-up").addEventListener("click", () => {
  const parent = parentOf(browserPath);
  choosePath(parent);
  browse(parent);
});

// ---- checking the form in the page -------------------------------------------------------------------

const MESSAGES = {
  "image-path": "Give a path under the images root, or pick a file or folder below.",
};

function showFieldError(id, control, message) {
  const element = $(id);
  if (element) {
    element.hidden = false;
    element.textContent = message;
  }
  control?.setAttribute("aria-invalid", "true");
}

function hideFieldError(id, control) {
  const element = $(id);
  if (element) {
    element.hidden = true;
    element.textContent = "";
  }
  control?.removeAttribute("aria-invalid");
}

function clearErrors() {
  for (const element of form.querySelectorAll(".field-error")) {
    element.hidden = true;
    element.textContent = "";
  }
  for (const control of form.querySelectorAll("[aria-invalid]")) control.removeAttribute("aria-invalid");
  $("form-error").replaceChildren();
}

function urlProblem(text) {
  const lines = text.split("\n").map((line) => line.trim()).filter(Boolean);
  if (!lines.length) return "Give at least one image URL, one a line.";
  const most = catalogue.limits.maxUrls;
  if (lines.length > most) return `${lines.length} URLs were given; send at most ${most} at once.`;
  for (const [index, line] of lines.entries()) {
    let url;
    try {
      url = new URL(line);
    } catch {
      return `Line ${index + 1} is not a URL: ${line}`;
    }
    if (url.protocol !== "http:" && url.protocol !== "https:") return `Line ${index + 1} is not an http or https URL: ${line}`;
  }
  return "";
}

/** The problems with the form as [control, error element id, sentence], checked by the browser's constraints. */
function problems() {
  const found = [];
  const source = choice("source");
  const urls = $("image-urls");
  urls.setCustomValidity(source === "url" ? urlProblem(urls.value) : "");
  if (source === "upload" && !picked.length) {
    found.push([dropzone, "files-error", "Choose at least one image file, or drop files on the box."]);
  }
  for (const control of form.elements) {
    if (!control.willValidate || control.checkValidity()) continue;
    const message = control.validity.customError ? control.validationMessage
      : control.dataset.message || MESSAGES[control.id] || control.validationMessage;
    found.push([control, `${control.id}-error`, message]);
  }
  return found;
}

function showProblems(found) {
  const list = h("ul");
  for (const [control, errorId, message] of found) {
    if (errorId) showFieldError(errorId, control, message);
    else control.setAttribute("aria-invalid", "true");
    list.append(h("li", { text: message }));
  }
  $("form-error").replaceChildren(
    h("p", { class: "error-title", text: found.length === 1 ? "Fix this before submitting:" : `Fix these ${found.length} things before submitting:` }),
    list);
  found[0][0].focus();
}

form.addEventListener("input", (event) => {
  const control = event.target;
  if (control.getAttribute?.("aria-invalid") === "true" && control.checkValidity()) hideFieldError(`${control.id}-error`, control);
});

// ---- submitting ----------------------------------------------------------------------------------------

function actionNamed(name) {
  return catalogue.actions.find((action) => action.name === name);
}

function workOptions(action) {
  return optionsOf(form.querySelector(`.options[data-action="${action}"]`));
}

/** {url, init, subject, detail}: the request for the form's choices. */
function buildRequest() {
  const action = choice("action");
  const options = workOptions(action);
  const source = choice("source");
  const url = `/imageapi?action=${encodeURIComponent(action)}`;
  if (source === "upload") {
    const body = new FormData();
    for (const file of picked) body.append("image", file, file.name);
    for (const [name, value] of Object.entries(options)) body.append(name, String(value));
    const names = picked.map((file) => file.name);
    return {
      url, init: { method: "POST", body }, action, options, source,
      subject: names.length === 1 ? names[0] : `${names.length} uploaded files`,
      picture: picked.length === 1 ? picked[0] : null,
      detail: names.length === 1 ? "1 uploaded file" : names.slice(0, 3).join(", ") + (names.length > 3 ? ` and ${names.length - 3} more` : ""),
    };
  }
  const json = { ...options };
  let subject;
  let detail = "";
  if (source === "path") {
    json.imagePath = pathInput.value.trim();
    json.recursive = $("recursive").checked;
    subject = json.imagePath;
    detail = json.recursive ? "with subfolders" : "";
  } else {
    json.imageUrl = $("image-urls").value.split("\n").map((line) => line.trim()).filter(Boolean);
    subject = json.imageUrl.length === 1 ? json.imageUrl[0] : `${json.imageUrl.length} image URLs`;
  }
  return {
    url, action, options, subject, detail, source,
    init: { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(json) },
  };
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  clearErrors();
  const found = problems();
  if (found.length) {
    showProblems(found);
    return;
  }
  const request = buildRequest();
  const submit = $("submit");
  submit.disabled = true;
  submit.textContent = "Submitting…";
  form.setAttribute("aria-busy", "true");
  let response;
  try {
    response = await api(request.url, request.init);
  } catch (exc) {
    formError(`The service did not answer (${exc.message}); check that it runs, then submit again.`);
    return;
  } finally {
    submit.disabled = false;
    submit.textContent = "Submit job";
    form.removeAttribute("aria-busy");
  }
  if (response.status !== 202) {
    if (response.status === 401) tokenNeeded(true);
    formError(await errorSentence(response));
    return;
  }
  queued(request, await readJson(response));
});

/** A job the service queued for a request: listed, announced, kept. A path's or URLs' request is kept with it
 * (its JSON body), so the job can be redone; uploads cannot (the files are not kept by the page). */
function queued(request, answer) {
  const job = {
    id: answer.jobId, action: answer.action || request.action,
    title: `${titleOf(actionNamed(request.action), request.options)} of ${request.subject}`,
    subject: request.subject, detail: request.detail, source: request.source, submitted: new Date().toISOString(),
    redo: request.source === "upload" ? null : { url: request.url, body: JSON.parse(request.init.body) },
  };
  if (request.picture) rememberPicture(job.id, request.picture);
  addJob(job, true);
  announce(`Job queued: ${job.title}.`);
}

/** Redo an ended job: the same request with force=true, so every image is worked again, not reused. */
async function redoJob(row) {
  const { url, body } = row.job.redo;
  const init = { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ ...body, force: true }) };
  let response;
  try {
    response = await api(url, init);
  } catch (exc) {
    row.setNote(`The service did not answer the redo (${exc.message}); try again.`);
    return;
  }
  if (response.status !== 202) {
    row.setNote(`The redo was refused: ${await errorSentence(response)}`);
    return;
  }
  const answer = await readJson(response);
  const job = { ...row.job, id: answer.jobId, submitted: new Date().toISOString(), detail: "redone: every image again" };
  addJob(job, true);
  announce(`Job queued again: ${job.title}.`);
}

function formError(message) {
  $("form-error").replaceChildren(h("p", { class: "error-title", text: "The service refused the job:" }), h("p", { text: message }));
}

// ---- jobs kept across reloads (localStorage) ---------------------------------------------------------------

const JOBS_KEY = "imageapi.jobs";
const KEPT_JOBS = 50;

function storedJobs() {
  try {
    const jobs = JSON.parse(localStorage.getItem(JOBS_KEY) || "[]");
    return Array.isArray(jobs) ? jobs.filter((job) => job && typeof job.id === "string") : [];
  } catch {
    return [];
  }
}

function storeJobs(jobs) {
  try {
    localStorage.setItem(JOBS_KEY, JSON.stringify(jobs.slice(0, KEPT_JOBS)));
  } catch {
    // storage full or refused: the list still works until the next reload
  }
}

// ---- job rows -------------------------------------------------------------------------------------------------

const rows = new Map(); // jobId -> row
const jobsList = $("jobs");

const STATUS_TEXT = {
  submitted: "Checking…", queued: "Queued", started: "Running", finished: "Finished",
  failed: "Failed", canceled: "Canceled", expired: "Expired", error: "Error",
};
const ENDED = new Set(["finished", "failed", "canceled", "expired", "error"]);
const RATE_WINDOW = 5000; // ms: a running batch's rate is measured over about this long
const RATE_SPAN = 800; // ms: the least span a rate is measured over

const handledOf = (progress) => (progress ? (progress.done || 0) + (progress.failed || 0) : 0);

/** "42 images/s", "3.5 images/s" */
function rateText(perSecond) {
  const shown = perSecond >= 10 ? Math.round(perSecond) : perSecond >= 1 ? perSecond.toFixed(1) : perSecond.toFixed(2);
  return `${shown} ${Number(shown) === 1 ? "image" : "images"}/s`;
}

/** "about 8 s left", "about 3 min 20 s left", "about 2 h 5 min left" */
function timeLeftText(seconds) {
  const whole = Math.max(1, Math.round(seconds));
  if (whole < 60) return `about ${whole} s left`;
  if (whole < 3600) return `about ${Math.floor(whole / 60)} min ${whole % 60 ? `${whole % 60} s ` : ""}left`;
  const minutes = Math.round(whole / 60);
  return `about ${Math.floor(minutes / 60)} h ${minutes % 60 ? `${minutes % 60} min ` : ""}left`;
}

class JobRow {
  constructor(job, restored) {
    this.job = job;
    this.status = "";
    this.quiet = restored; // a row restored after a reload does not announce its first status
    this.removed = false;
    this.urls = new Set();
    this.abort = new AbortController();
    this.seen = 0; // a batch's done + failed last shown: the next long-poll answers once it moves
    this.samples = []; // {t, n}: when each count was seen, for the rate
    this.shownHandled = -1; // a canceled batch's count on show
    const titleId = `job-${job.id}-title`;
    this.badge = h("span", { class: "badge" });
    this.note = h("p", { class: "job-note", hidden: true });
    this.bar = h("progress", {});
    this.progressText = h("span", { class: "progress-text" });
    this.rate = h("span", { class: "progress-rate" });
    this.cancelButton = h("button", {
      type: "button", class: "secondary small cancel", text: "Cancel", "aria-label": `Cancel “${job.title}”`,
      onclick: () => cancelJob(this),
    });
    this.progress = h("div", { class: "job-progress", hidden: true }, this.bar, this.progressText, this.rate, this.cancelButton);
    this.body = h("div", { class: "job-result" });
    const time = new Date(job.submitted);
    this.timing = h("span", { class: "timing" });
    this.title = h("h3", { id: titleId, class: "job-title", text: job.title, tabindex: "-1" });
    this.redoButton = job.redo ? h("button", {
      type: "button", class: "secondary small redo", text: "Redo", hidden: true,
      "aria-label": `Redo “${job.title}”: every image again`, onclick: () => redoJob(this),
    }) : null;
    this.element = h("li", { class: "job", "data-job-id": job.id },
      h("div", { class: "job-head" },
        this.title,
        this.badge,
        this.redoButton,
        h("button", {
          type: "button", class: "icon-button", "aria-label": `Remove “${job.title}” from the list`, title: "Remove from the list",
          onclick: () => removeJob(job.id, true),
        }, "×")),
      h("p", { class: "job-meta" },
        job.detail ? h("span", { text: job.detail }) : null,
        isNaN(time) ? null : h("span", { text: `submitted ${submittedWhen(time)}` }),
        this.timing,
        h("span", {}, "job ", h("code", { text: job.id.slice(0, 8), title: job.id }))),
      this.progress, this.note, this.body);
    this.files = {
      load: (path) => this.loadFile(path),
      release: (url) => this.release(url),
      save: (path, name) => saveFile(path, name),
    };
    this.setStatus("submitted", true);
  }

  get ended() {
    return ENDED.has(this.status);
  }

  setStatus(status, quiet = false) {
    if (status === this.status) return;
    this.status = status;
    this.element.dataset.status = status;
    this.badge.textContent = STATUS_TEXT[status] || status;
    if (this.redoButton) this.redoButton.hidden = !this.ended;
    if (!quiet && !this.quiet) announce(`${this.job.title}: ${STATUS_TEXT[status].toLowerCase()}.`);
    if (!quiet) this.quiet = false;
    updateClearButton();
  }

  setNote(text) {
    this.note.hidden = !text;
    this.note.textContent = text || "";
  }

  /**
   * A batch's bar (done + failed of total) with its count, and while it runs its rate and time left; or an
   * indeterminate bar while a single job runs. Updated in place; Cancel shows while the job runs.
   */
  setProgress(progress, running, status = "started") {
    const bar = this.bar;
    this.cancelButton.hidden = !running;
    if (progress && progress.total) {
      const handled = handledOf(progress);
      this.progress.hidden = false;
      bar.max = progress.total;
      bar.value = handled;
      bar.setAttribute("aria-label", `Progress of ${this.job.title}`);
      this.progressText.textContent = `${number(handled)} of ${plural(progress.total, "image")}`
        + (progress.failed ? ` (${number(progress.failed)} failed)` : "");
      this.rate.textContent = running ? this.measure(handled, progress.total, status) : "";
    } else if (running) {
      this.progress.hidden = false;
      const doing = status === "queued" ? "waiting for a worker…" : "working…";
      bar.removeAttribute("value"); // indeterminate
      bar.removeAttribute("max");
      bar.setAttribute("aria-label", `${this.job.title}: ${doing}`);
      this.progressText.textContent = doing;
      this.rate.textContent = "";
    } else {
      this.progress.hidden = true;
    }
  }

  /** The rate over the last RATE_WINDOW ms of counts seen while it ran, and the time left at that rate. */
  measure(handled, total, status) {
    if (status !== "started") return ""; // time spent queued is not work
    const now = performance.now();
    const samples = this.samples;
    samples.push({ t: now, n: handled });
    while (samples.length > 2 && now - samples[1].t >= RATE_WINDOW) samples.shift();
    const first = samples[0];
    const span = now - first.t;
    const gained = handled - first.n;
    if (span < RATE_SPAN || gained <= 0) return this.rate.textContent; // too early to tell: keep what shows
    const perSecond = (gained * 1000) / span;
    const left = total - handled;
    return left > 0 ? `${rateText(perSecond)} · ${timeLeftText(left / perSecond)}` : rateText(perSecond);
  }

  /** An answer of /result: 202 while it runs, 200 once it ended. */
  update(answer) {
    const status = answer.status === "queued" || answer.status === "started" ? answer.status : "started";
    this.setStatus(status);
    this.setProgress(answer.progress, true, status);
    if (answer.progress) this.seen = handledOf(answer.progress);
  }

  showTiming(answer, verb = "took") {
    if (answer.enqueuedAt && answer.endedAt) {
      const seconds = (Date.parse(answer.endedAt) - Date.parse(answer.enqueuedAt)) / 1000;
      if (seconds >= 0) {
        const shown = seconds < 10 ? seconds.toFixed(1) : Math.round(seconds);
        this.timing.textContent = verb === "took"
          ? (seconds < 0.1 ? "took under 0.1 s" : `took ${shown} s`)
          : `${verb} after ${seconds < 0.1 ? "under 0.1" : shown} s`;
      }
    }
  }

  end(answer) {
    if (answer.status === "canceled") {
      this.showCanceled(answer);
      return;
    }
    if (this.ended) return; // shown already (a cancel's answer and a long-poll's can cross)
    this.showTiming(answer);
    if (answer.status === "finished") {
      const result = answer.result || {};
      this.setProgress(Array.isArray(result.images) ? result : null, false);
      this.body.replaceChildren(resultView(this.job, result, this.files));
      this.setStatus("finished");
    } else {
      this.setProgress(null, false);
      const error = String(answer.error || "the job failed.").replaceAll(`uploads/${this.job.id}/`, "");
      this.body.replaceChildren(h("p", { class: "error-text" }, h("strong", { text: "Failed: " }), error));
      this.setStatus("failed");
    }
  }

  /**
   * A canceled job: its count where it stopped and, for a batch, the entries made before the cancel. Shown
   * again (quietly) if a later answer holds more: a worker writes the images it had in hand at the cancel.
   */
  showCanceled(answer) {
    const handled = handledOf(answer.progress);
    if (this.status === "canceled" && handled <= this.shownHandled) return;
    if (this.ended && this.status !== "canceled") return;
    this.shownHandled = handled;
    this.showTiming(answer, "canceled");
    this.setProgress(answer.progress, false);
    this.body.replaceChildren(canceledView(this.job, answer, this.files));
    this.setStatus("canceled");
  }

  expire() {
    this.setProgress(null, false);
    this.body.replaceChildren(h("p", { class: "hint", text: "The result expired: the service keeps results for a limited time. Submit the job again to see it." }));
    this.setStatus("expired");
  }

  fail(message) {
    this.setProgress(null, false);
    this.body.replaceChildren(h("p", { class: "error-text", text: message }));
    this.setStatus("error");
  }

  async loadFile(path) {
    const url = await blobUrl(path);
    if (this.removed) {
      URL.revokeObjectURL(url);
      throw new Error("removed");
    }
    this.urls.add(url);
    return url;
  }

  release(url) {
    URL.revokeObjectURL(url);
    this.urls.delete(url);
  }

  dispose() {
    this.removed = true;
    this.abort.abort();
    this.urls.forEach((url) => URL.revokeObjectURL(url));
    this.urls.clear();
    this.element.remove();
  }
}

function submittedWhen(time) {
  const today = new Date().toDateString() === time.toDateString();
  return today ? time.toLocaleTimeString() : time.toLocaleString();
}

function addJob(job, fresh) {
  if (rows.has(job.id)) return;
  const row = new JobRow(job, !fresh);
  rows.set(job.id, row);
  if (fresh) {
    jobsList.prepend(row.element);
    storeJobs([job, ...storedJobs().filter((kept) => kept.id !== job.id)]);
    row.setStatus("queued", true); // the submission announces it
    row.setProgress(null, true, "queued");
  } else {
    jobsList.append(row.element);
  }
  $("jobs-empty").hidden = true;
  watch(row);
}

function removeJob(id, byUser) {
  const row = rows.get(id);
  if (!row) return;
  const next = row.element.nextElementSibling || row.element.previousElementSibling;
  row.dispose();
  rows.delete(id);
  storeJobs(storedJobs().filter((job) => job.id !== id));
  $("jobs-empty").hidden = rows.size > 0;
  updateClearButton();
  if (byUser) {
    announce(`Removed ${row.job.title} from the list.`);
    (next?.querySelector(".icon-button") || $("jobs-heading")).focus();
  }
}

function updateClearButton() {
  $("clear-ended").hidden = ![...rows.values()].some((row) => ENDED.has(row.status));
}

$("clear-ended").addEventListener("click", () => {
  const ended = [...rows.values()].filter((row) => ENDED.has(row.status));
  ended.forEach((row) => removeJob(row.job.id, false));
  announce(`Removed ${plural(ended.length, "ended job")} from the list.`);
  $("jobs-heading").focus();
});

// ---- watching: long-polls, a few at a time -------------------------------------------------------------------

// A browser opens at most 6 connections to one host; long-polls take at most 4, so a submission or a
// folder listing never waits behind them. Jobs beyond 4 wait their turn, and while any wait, a poll
// holds for 5 s instead of 25 so the turns go round. A batch's poll carries seen=<done + failed shown>
// and is answered as soon as its progress moves; the next one starts at least POLL_GAP after the last,
// so a fast batch is shown about twice a second, not on every write of its workers.
const MAX_POLLS = 4;
const WAIT = 25;
const SHORT_WAIT = 5;
const POLL_GAP = 400; // ms
let polling = 0;
const turns = [];

function takeTurn() {
  if (polling < MAX_POLLS) {
    polling += 1;
    return Promise.resolve();
  }
  return new Promise((resolve) => turns.push(resolve));
}

function endTurn() {
  const next = turns.shift();
  if (next) next();
  else polling -= 1;
}

async function watch(row) {
  let backoff = 0;
  let lastPoll = -Infinity;
  while (!row.removed && !row.ended) {
    const gap = lastPoll + POLL_GAP - performance.now();
    if (gap > 0) await sleep(gap);
    await takeTurn();
    if (row.removed || row.ended) {
      endTurn();
      return;
    }
    const wait = turns.length ? SHORT_WAIT : WAIT;
    lastPoll = performance.now();
    let response;
    let answer;
    try {
      const signal = AbortSignal.any([row.abort.signal, AbortSignal.timeout((wait + 20) * 1000)]);
      // seen is read by the service for a batch only (a single job's answer comes when it ends)
      response = await api(`/result/${encodeURIComponent(row.job.id)}?wait=${wait}&seen=${row.seen}`, { signal });
      answer = await readJson(response);
    } catch (exc) {
      if (row.removed) return endTurn();
      endTurn();
      backoff = Math.min(backoff ? backoff * 2 : 2, 30);
      row.setNote(`The service did not answer; trying again in ${backoff} s.`);
      await sleep(backoff * 1000);
      continue;
    }
    endTurn();
    if (row.removed) return;
    if (response.status === 200) {
      row.setNote("");
      row.end(answer); // after a cancel, a canceled answer may still add the images the workers had in hand
      return;
    }
    if (row.ended) return; // canceled meanwhile
    if (response.status === 202) {
      backoff = 0;
      row.setNote("");
      row.update(answer);
      continue;
    }
    if (response.status === 404) {
      row.setNote("");
      row.expire();
      return;
    }
    if (response.status === 401) {
      tokenNeeded(true);
      row.setNote("Waiting for a token to check this job.");
      await whenToken();
      row.setNote("");
      continue;
    }
    if (response.status === 429 || response.status >= 500) {
      backoff = Math.min(backoff ? backoff * 2 : 2, 30);
      row.setNote(`${answer.error || `The service answered ${response.status}.`} Trying again in ${backoff} s.`);
      await sleep(backoff * 1000);
      continue;
    }
    row.setNote("");
    row.fail(answer.error || `The service answered ${response.status}.`);
    return;
  }
}

// ---- canceling: DELETE /result/<jobId> --------------------------------------------------------------------

async function cancelJob(row) {
  const button = row.cancelButton;
  const focused = document.activeElement === button;
  button.disabled = true;
  button.textContent = "Canceling…";
  let response;
  let answer;
  try {
    response = await api(`/result/${encodeURIComponent(row.job.id)}`, { method: "DELETE" });
    answer = await readJson(response);
  } catch (exc) {
    row.setNote(`The service did not answer the cancel (${exc.message}); try again.`);
    button.disabled = false;
    button.textContent = "Cancel";
    return;
  }
  if (row.removed) return;
  button.textContent = "Cancel";
  if (response.status === 200) {
    row.setNote("");
    row.end(answer);
    if (answer.progress) settle(row, handledOf(answer.progress));
  } else if (response.status === 409) {
    // it had ended already: the long-poll under way is answered with how, and shows it
    row.setNote("It had ended already.");
  } else if (response.status === 404) {
    row.setNote("");
    row.expire();
  } else {
    if (response.status === 401) tokenNeeded(true);
    row.setNote(`The cancel was refused: ${answer.error || `the service answered ${response.status}.`}`);
    button.disabled = false;
  }
  if (focused && (row.ended || button.hidden)) row.title.focus(); // the button is gone: keep the place in the list
}

/**
 * After a batch's cancel, read it again, a second apart, until its count has held for two reads in a row (at most
 * eight): a chunk running at the cancel still writes the images it had in hand before it stops, a quarter of a
 * second after the cancel on an idle machine, but on a busy one a second later or more, when one read that
 * matched the count at the cancel had ended the wait before that write (the browser test saw 71 of 82, once).
 */
async function settle(row, count) {
  let held = 0;
  for (let tries = 0; tries < 8; tries += 1) {
    await sleep(1000);
    if (row.removed) return;
    let answer;
    try {
      const response = await api(`/result/${encodeURIComponent(row.job.id)}`, { signal: row.abort.signal });
      if (response.status !== 200) return;
      answer = await readJson(response);
    } catch {
      return;
    }
    if (row.removed || answer.status !== "canceled") return;
    row.end(answer);
    const now = handledOf(answer.progress);
    held = now === count ? held + 1 : 0;
    if (held === 2) return;
    count = now;
  }
}

// ---- tokens -------------------------------------------------------------------------------------------------------

function tokenNeeded(needed) {
  $("token-needed").hidden = !needed || Boolean(token());
}

function showTokenState(value) {
  $("token-state").hidden = !value;
  if (value) $("token-needed").hidden = true;
}

onTokenChange(showTokenState);
showTokenState(token());
$("token-forget").addEventListener("click", () => {
  forgetToken();
  announce("The token is forgotten; the page will ask again when the service needs one.");
});
$("token-enter").addEventListener("click", () => askToken());

// ---- start -----------------------------------------------------------------------------------------------------------

window.addEventListener("storage", (event) => {
  if (event.key !== JOBS_KEY) return;
  const kept = storedJobs();
  const keptIds = new Set(kept.map((job) => job.id));
  for (const id of [...rows.keys()]) if (!keptIds.has(id)) removeJob(id, false);
  for (const job of kept.slice().reverse()) {
    if (!rows.has(job.id)) {
      addJob(job, false);
      jobsList.prepend(rows.get(job.id).element);
    }
  }
});

async function start() {
  try {
    catalogue = await loadCatalogue(api);
  } catch (exc) {
    formError(`The service did not say what it offers (${exc.message}); reload the page once it runs.`);
  }
  renderActions(catalogue, $("action-list"), $("action-options"));
  IMAGE_NAME = imageNamePattern(catalogue.limits);
  fileInput.accept = ["image/*", ...catalogue.limits.imageExtensions].join(",");
  sourceChanged();
  actionChanged();
  renderPicked();
  for (const job of storedJobs()) addJob(job, false);
  document.documentElement.dataset.ready = "true";
}

start();

