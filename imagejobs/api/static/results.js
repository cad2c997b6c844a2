// How a finished (or canceled) job's result is shown: a thumbnail, a plot, labels with score bars, a grid of
// thumbnails or a table for batches. What to show is read from the result itself (a path, a plot,
// predictions, a size), never from the action's name.
//
// A batch may hold 10,000 entries: it is shown a page of PAGE_SIZE at a time (never more in the DOM), with a
// "Failed only" filter, and a grid's thumbnails are fetched only as they scroll into view, a few at a time.
import { announce, baseName, breakable, h, number, plural } from "./dom.js";
import { decode as decodeBlurHash } from "./vendor/blurhash.js";

export const PAGE_SIZE = 100; // entries in the DOM at once, in a grid or a table
// Thumbnails fetched at once: with app.js's 4 long-polls (MAX_POLLS), within a browser's 6 connections to a
// host, so a submission waits at most for a thumbnail (a few ms), never behind a long-poll.
const THUMB_LOADS = 2;

/**
 * The element showing a finished job's result.
 * job: {id, action, title, subject}; files: {load(path) -> Promise of a blob: URL of a file the service
 * serves, release(url) once it is no longer shown, save(path, name) -> Promise, a download}.
 */
export function resultView(job, result, files) {
  if (!result || typeof result !== "object") return h("p", { text: "The job finished without a result." });
  if (Array.isArray(result.images)) return batchView(job, result, files, false);
  if (typeof result.plot === "string") {
    return fileFigure(result.plot, `Chart: ${job.title}`, `plot-${job.id}.png`,
      files, "plot", null, "Download the PNG");
  }
  if (Array.isArray(result.predictions)) return predictionsView(job, result, files);
  if (typeof result.path === "string") {
    const name = baseName(result.path);
    return fileFigure(`/result/file?jobId=${encodeURIComponent(job.id)}`, `Thumbnail of ${job.subject}, ${result.width} by ${result.height} pixels`,
      name, files, "thumbnail", `${result.width} × ${result.height} px · ${result.format}`, `Download ${name}`);
  }
  if ("width" in result && "height" in result) return pagedTable(job, [{ image: job.subject, result }], null);
  return h("pre", { class: "raw", text: JSON.stringify(result, null, 2) });
}

/** A canceled job (an answer with status "canceled"): a batch's entries made before the cancel, as a finished batch's. */
export function canceledView(job, answer, files) {
  const progress = answer.progress;
  if (!progress) return h("p", { class: "hint", text: "Canceled: the job stopped before it made a result." });
  const images = Array.isArray(answer.result?.images) ? answer.result.images : [];
  return batchView(job, { total: progress.total, done: progress.done, failed: progress.failed, images }, files, true);
}

/** An image the service serves, fetched as a blob (so the token goes along), with a download link. */
function fileFigure(path, alt, downloadName, files, kind, caption, linkText) {
  const status = h("p", { class: "hint", text: "Loading the image…" });
  const img = h("img", { alt, class: kind, decoding: "async" });
  const link = h("a", { class: "download", download: downloadName, text: linkText });
  const figure = h("figure", { class: `file ${kind}`, "aria-busy": "true" }, status);
  files.load(path).then(
    (url) => {
      img.src = url;
      link.href = url;
      status.replaceWith(img);
      figure.append(h("figcaption", {}, caption ? h("span", { text: caption }) : null, link));
      figure.removeAttribute("aria-busy");
    },
    (error) => {
      status.className = "error-text";
      status.textContent = `The image could not be fetched: ${error.message}`;
      figure.removeAttribute("aria-busy");
    },
  );
  return figure;
}

// The file picked for a single upload, by jobId, while this page lives (not kept across a reload: the page does
// not keep files), so its classification can show it.
const uploadedPictures = new Map();

/** Keep the File a one-file upload job sent, to show beside its result. */
export function rememberPicture(jobId, file) {
  uploadedPictures.set(jobId, file);
}

/** Labels with score bars, beside the picture they are about when the page can show it: a path under the root,
 * or the file this page uploaded (one a browser cannot draw, a HEIC in most, is left out quietly). */
function predictionsView(job, result, files) {
  const alt = `The classified image, ${job.subject}`;
  const uploaded = uploadedPictures.get(job.id);
  let picture = null;
  if (uploaded) picture = uploadedPicture(uploaded, alt);
  else if (job.source === "path" && job.subject) {
    picture = pictureOf(`/images/file?path=${encodeURIComponent(job.subject)}`, alt, files);
  }
  return h("div", { class: "classification" },
    picture,
    h("div", {},
      predictionList(result.predictions),
      result.model ? h("p", { class: "hint", text: `Model: ${result.model}` }) : null));
}

function uploadedPicture(file, alt) {
  const url = URL.createObjectURL(file);
  const img = h("img", { alt, class: "classified", decoding: "async" });
  img.addEventListener("load", () => URL.revokeObjectURL(url), { once: true });
  img.addEventListener("error", () => { URL.revokeObjectURL(url); img.remove(); }, { once: true });
  img.src = url;
  return img;
}

/** An image the service serves, shown small; left out quietly if it cannot be fetched (deleted since, say). */
function pictureOf(path, alt, files, className = "classified") {
  const img = h("img", { alt, class: className, decoding: "async" });
  files.load(path).then((url) => { img.src = url; }, () => img.remove());
  return img;
}

function predictionList(predictions) {
  return h("ol", { class: "predictions" }, predictions.map((prediction) => {
    const score = Number(prediction.score) || 0;
    const percent = Math.max(0, Math.min(100, score * 100));
    return h("li", {},
      h("span", { class: "pred-label", text: prediction.label }),
      h("span", { class: "bar", "aria-hidden": "true" }, h("span", { class: "fill", style: { width: `${percent}%` } })),
      h("span", { class: "score", text: `${percent.toFixed(1)} %` }));
  }));
}

/** The name to show for a batch entry: uploads and downloads without their job folder. */
export function shownName(job, image) {
  const text = String(image);
  const prefixes = [`uploads/${job.id}/`, `downloads/${job.id}/`];
  const folder = job.source === "path" ? String(job.subject || "").replace(/^\.\/|\/+$/g, "") : "";
  if (folder && folder !== ".") prefixes.push(`${folder}/`);
  const prefix = prefixes.find((start) => text.startsWith(start));
  return prefix ? text.slice(prefix.length) : text;
}

/** The kind of a result, by what it holds, with the columns of a batch table of such results. */
const KINDS = [
  { name: "labels", test: (result) => Array.isArray(result.predictions), columns: ["Image", "Labels"] },
  { name: "thumbnails", test: (result) => typeof result.path === "string", columns: ["Image", "Thumbnail"] },
  { name: "sizes", test: (result) => "mode" in result, columns: ["Image", "Size (px)", "Format", "Mode"] },
  { name: "hashes", test: (result) => typeof result.hash === "string", columns: ["Image", "Perceptual hash"] },
];
const OTHER = { name: "other", columns: ["Image", "Result"] };

function kindOf(result) {
  return KINDS.find((kind) => kind.test(result || {})) || OTHER;
}

// ---- a batch: summary, zip, filter, pages -------------------------------------------------------------------

function batchView(job, result, files, canceled) {
  const entries = result.images;
  const total = result.total ?? entries.length;
  const failed = result.failed ?? entries.filter((entry) => "error" in entry).length;
  const done = result.done ?? total - failed;
  const kind = kindOf(entries.find((entry) => entry.result)?.result);
  const handled = done + failed;
  const summary = h("p", { class: "batch-summary" },
    canceled ? `Canceled after ${number(handled)} of ${plural(total, "image")}: ${number(done)} done` : `${plural(total, "image")}: ${number(done)} done`,
    failed ? h("span", { class: "error-text", text: `, ${number(failed)} failed` }) : null, ".");
  const thumbnails = kind.name === "thumbnails";
  const parts = [summary];
  if (Array.isArray(result.groups)) parts.push(groupsView(job, result.groups, files));
  if (thumbnails && done > 0) parts.push(zipDownload(job, done, files));  // a canceled batch's: what it made
  if (entries.length) parts.push(pagedEntries(job, entries, files, kind));
  else if (canceled) parts.push(h("p", { class: "hint", text: "No image was done before the cancel." }));
  if (thumbnails) {
    parts.push(h("p", { class: "hint", text: "Each thumbnail is saved under resized/ in the images root, in a folder named like its source's." }));
  }
  return h("div", { class: "batch" }, parts);
}

// A duplicates batch's groups, and each group's members, drawn at once: each picture drawn is a fetch of the
// image itself, and one group may hold thousands (every plain, one-colour image has the same hash).
const GROUPS_SHOWN = 50;
const MEMBERS_SHOWN = 12;

/** A duplicates batch's groups of copies: each group's images side by side, each with its distance in bits from
 * the group's first. */
function groupsView(job, groups, files) {
  if (!groups.length) return h("p", { class: "hint", text: "No copies: no two images are that close." });
  const more = groups.length > GROUPS_SHOWN ? `; the first ${GROUPS_SHOWN} are shown` : "";
  return h("section", { class: "duplicate-groups", "aria-label": `Groups of copies in ${job.title}` },
    h("p", { class: "batch-summary", text: `${plural(groups.length, "group")} of copies${more}:` }),
    h("ol", { class: "groups" }, groups.slice(0, GROUPS_SHOWN).map((group) => h("li", { class: "group" },
      group.images.slice(0, MEMBERS_SHOWN).map((member, index) => {
        const name = shownName(job, member.image);
        return h("figure", { class: "member" },
          pictureOf(`/images/file?path=${encodeURIComponent(member.image)}`, name, files, "member-picture"),
          h("figcaption", {}, breakable(name),
            h("span", { class: "hint", text: index === 0 ? "the first" : `${plural(member.distance, "bit")} apart` })));
      }),
      group.images.length > MEMBERS_SHOWN
        ? h("p", { class: "hint more-members", text: `and ${number(group.images.length - MEMBERS_SHOWN)} more (in the table below)` })
        : null))));
}

/** "Download all (zip)": GET /result/file?jobId= (every thumbnail of the batch), saved as <jobId>.zip. */
function zipDownload(job, count, files) {
  const name = `${job.id}.zip`;
  const status = h("span", { class: "hint", text: `${plural(count, "thumbnail")}, as ${name}` });
  const button = h("button", {
    type: "button", class: "secondary small", text: "Download all (zip)",
    onclick: async () => {
      button.disabled = true;
      button.textContent = "Preparing the zip…";
      try {
        await files.save(`/result/file?jobId=${encodeURIComponent(job.id)}`, name);
        status.className = "hint";
        status.textContent = `${plural(count, "thumbnail")}: saved as ${name}`;
        announce(`The zip of ${plural(count, "thumbnail")} of ${job.title} is downloading as ${name}.`);
      } catch (error) {
        status.className = "error-text";
        status.textContent = `The zip could not be fetched: ${error.message}`;
        announce(status.textContent);
      } finally {
        button.disabled = false;
        button.textContent = "Download all (zip)";
      }
    },
  });
  return h("p", { class: "batch-actions" }, button, status);
}

let filterCount = 0;

/** A batch's entries a page at a time (a grid of thumbnails, or a table), with "All" / "Failed only". */
function pagedEntries(job, entries, files, kind) {
  const failedIndexes = [];
  entries.forEach((entry, index) => { if ("error" in entry) failedIndexes.push(index); });
  let onlyFailed = false;
  let page = 0;
  const count = () => (onlyFailed ? failedIndexes.length : entries.length);
  const pages = () => Math.max(1, Math.ceil(count() / PAGE_SIZE));

  const what = kind.name === "thumbnails" ? "thumbnails" : "results";
  const list = kind.name === "thumbnails" ? thumbnailGrid(job, entries, files) : entryTable(job, entries, files, kind);
  const top = pager(`Pages of the ${what} of ${job.title}`, go);
  const bottom = pager(`Pages of the ${what} of ${job.title}, below them`, go);

  let filter = null;
  if (failedIndexes.length) {
    filterCount += 1;
    const name = `entries-filter-${filterCount}`;
    const choice = (value, text, checked) => h("label", {},
      h("input", { type: "radio", name, value, checked, onchange: () => showFailed(value === "failed") }), ` ${text}`);
    filter = h("fieldset", { class: "segmented entry-filter" },
      h("legend", { class: "visually-hidden", text: `Which entries of ${job.title} to show` }),
      choice("all", `All (${number(entries.length)})`, true),
      choice("failed", `Failed only (${number(failedIndexes.length)})`, false));
  }

  function render() {
    const from = page * PAGE_SIZE;
    const to = Math.min(count(), from + PAGE_SIZE);
    const indexes = [];
    for (let position = from; position < to; position += 1) indexes.push(onlyFailed ? failedIndexes[position] : position);
    list.show(indexes);
    const range = count() ? `${what} ${number(from + 1)}–${number(to)} of ${number(count())}` : `no ${what}`;
    for (const each of [top, bottom]) each.set(page, pages(), range);
    bottom.element.hidden = pages() === 1 || to - from < 12; // a short page needs no second pager
    return range;
  }

  // The focus stays on the step just taken, in the top pager (a step from the bottom one brings the new
  // page's start into view with it).
  function go(to, from) {
    page = Math.max(0, Math.min(pages() - 1, to));
    const range = render();
    announce(`Page ${number(page + 1)} of ${number(pages())}: ${range}.`);
    top.focus(from);
  }

  function showFailed(failedOnly) {
    onlyFailed = failedOnly;
    page = 0;
    const range = render();
    announce(failedOnly ? `Showing the ${plural(failedIndexes.length, "failed image")} only.` : `Showing all ${range}.`);
  }

  render();
  return h("div", { class: "entries-view" },
    h("div", { class: "entries-controls" }, filter, top.element),
    list.element, bottom.element);
}

/** Previous / "Page 2 of 3" / Next (and First, Last when there are more than 2 pages). */
function pager(label, go) {
  let page = 0;
  let pages = 1;
  // « and » stand alone on a narrow card (the word is hidden): those two are named by aria-label
  const button = (content, name, target, ariaLabel) => h("button", {
    type: "button", class: `secondary small step-${name}`, "data-step": name, "aria-label": ariaLabel,
    onclick: () => go(target(), name),
  }, content);
  const word = (text) => h("span", { class: "pager-word", text });
  const first = button(["«", word(" First")], "first", () => 0, "First page");
  const previous = button("‹ Previous", "previous", () => page - 1);
  const next = button("Next ›", "next", () => page + 1);
  const last = button([word("Last "), "»"], "last", () => pages - 1, "Last page");
  const status = h("span", { class: "pager-status" });
  const range = h("span", { class: "pager-range" });
  const where = h("span", { class: "pager-where" }, status, " ", range);
  const element = h("nav", { class: "pager", "aria-label": label }, first, previous, where, next, last);
  return {
    element,
    set(now, count, rangeText) {
      page = now;
      pages = count;
      element.hidden = count === 1;
      status.textContent = `Page ${number(now + 1)} of ${number(count)}`;
      range.textContent = rangeText;
      first.hidden = last.hidden = count <= 2;
      first.disabled = previous.disabled = now === 0;
      next.disabled = last.disabled = now === count - 1;
    },
    /** Keep the focus on the step just taken; if that button is now disabled, on its enabled opposite. */
    focus(name) {
      const buttons = { first, previous, next, last };
      const opposite = { first: next, previous: next, next: previous, last: previous };
      const wanted = buttons[name];
      if (!wanted) return;
      if (!wanted.disabled && !wanted.hidden) wanted.focus();
      else opposite[name].focus();
    },
  };
}

// ---- a grid of thumbnails, fetched lazily -------------------------------------------------------------------

// The side of the placeholder's bitmap: a blur needs no more, and the browser scales it to the tile.
const PLACEHOLDER_SIDE = 32;

/** A canvas drawing the thumbnail's BlurHash (result.placeholder), as large as the thumbnail will show, until
 * the thumbnail itself arrives; null without a placeholder, or with one the decoder refuses. */
function placeholderOf(result) {
  if (typeof result.placeholder !== "string" || !(result.width > 0 && result.height > 0)) return null;
  const scale = PLACEHOLDER_SIDE / Math.max(result.width, result.height);
  const width = Math.max(1, Math.round(result.width * scale));
  const height = Math.max(1, Math.round(result.height * scale));
  let pixels;
  try {
    pixels = decodeBlurHash(result.placeholder, width, height);
  } catch {
    return null;
  }
  const canvas = h("canvas", {
    class: "placeholder", width, height, "aria-hidden": "true",
    style: { maxWidth: `${result.width}px`, maxHeight: `${result.height}px` },
  });
  canvas.getContext("2d").putImageData(new ImageData(pixels, width, height), 0, 0);
  return canvas;
}

// One queue for the page: at most THUMB_LOADS thumbnails are fetched at once; a tile that left the DOM (its
// page was turned, its job removed) before its turn is skipped.
const waiting = [];
let loading = 0;

function queueLoad(task) {
  waiting.push(task);
  pump();
}

function pump() {
  while (loading < THUMB_LOADS && waiting.length) {
    const task = waiting.shift();
    if (!task.tile.isConnected) continue;
    loading += 1;
    task.run().finally(() => {
      loading -= 1;
      pump();
    });
  }
}

/** The thumbnail a resize entry made, by its path under the images root (works for a canceled batch too). */
function thumbnailPath(result) {
  return `/images/file?path=${encodeURIComponent(result.path)}`;
}

function thumbnailGrid(job, entries, files) {
  const grid = h("ul", { class: "thumb-grid", "aria-label": `Thumbnails of ${job.title}` });
  let shownUrls = [];
  const observer = "IntersectionObserver" in window
    ? new IntersectionObserver((seen) => {
      for (const item of seen) {
        if (!item.isIntersecting) continue;
        observer.unobserve(item.target);
        item.target.load?.();
      }
    }, { rootMargin: "150px 0px" })
    : null;

  function tile(index) {
    const entry = entries[index];
    const name = shownName(job, entry.image);
    if ("error" in entry || !entry.result || typeof entry.result.path !== "string") {
      const error = "error" in entry ? String(entry.error) : "no thumbnail was made.";
      return h("li", { class: "tile failed", "data-index": index },
        h("span", { class: "tile-name" }, breakable(name)),
        h("span", { class: "tile-error error-text" }, h("strong", { text: "Failed: " }), error.replaceAll(`uploads/${job.id}/`, "")));
    }
    const result = entry.result;
    const thumbName = baseName(result.path);
    const img = h("img", { alt: `Thumbnail of ${name}`, decoding: "async", width: result.width, height: result.height });
    const placeholder = placeholderOf(result);
    const box = h("span", { class: "tile-image", "aria-busy": "true" }, placeholder);
    const link = h("a", { class: "tile-name", download: thumbName, title: `Download ${thumbName}` }, breakable(name));
    const item = h("li", { class: "tile", "data-index": index },
      box, link, h("span", { class: "tile-size", text: `${result.width} × ${result.height} · ${result.format ?? ""}` }));
    item.load = () => queueLoad({
      tile: item,
      run: () => files.load(thumbnailPath(result)).then(
        (url) => {
          if (!item.isConnected) {
            files.release(url);
            return;
          }
          shownUrls.push(url);
          img.src = url;
          link.href = url;
          placeholder?.remove();
          box.append(img);
          box.removeAttribute("aria-busy");
        },
        () => {
          box.removeAttribute("aria-busy");
          box.classList.add("missing");
          box.title = "The thumbnail could not be fetched";
        },
      ),
    });
    return item;
  }

  return {
    element: grid,
    show(indexes) {
      observer?.disconnect();
      shownUrls.forEach((url) => files.release(url)); // the page turned: its thumbnails are let go
      shownUrls = [];
      const tiles = indexes.map(tile);
      grid.replaceChildren(...tiles);
      for (const item of tiles) {
        if (!item.load) continue;
        if (observer) observer.observe(item);
        else item.load();
      }
    },
  };
}

// ---- a table (sizes, labels, anything else) ---------------------------------------------------------------

function cells(kind, result) {
  if (kind.name === "labels") return [predictionList(result.predictions || [])];
  if (kind.name === "sizes") return [`${result.width} × ${result.height}`, result.format ?? "", result.mode ?? ""];
  if (kind.name === "thumbnails") return [`${baseName(result.path)} (${result.width} × ${result.height})`];
  if (kind.name === "hashes") return [h("code", { text: result.hash })];
  return [h("code", { text: JSON.stringify(result) })];
}

function entryTable(job, entries, files, kind = kindOf(entries.find((entry) => entry.result)?.result)) {
  const columns = kind.columns;
  const body = h("tbody");
  const row = (index) => {
    const entry = entries[index];
    const name = h("th", { scope: "row", class: "image-name", text: shownName(job, entry.image) });
    if ("error" in entry) {
      return h("tr", { class: "failed", "data-index": index }, name,
        h("td", { colspan: columns.length - 1, class: "error-text" }, h("strong", { text: "Failed: " }),
          String(entry.error).replaceAll(`uploads/${job.id}/`, "")));
    }
    return h("tr", { "data-index": index }, name, cells(kind, entry.result || {})
      .map((cell, column) => h("td", { "data-label": columns[column + 1] }, cell)));
  };
  const element = h("div", { class: "table-wrap" },
    h("table", { class: `results ${kind.name}` },
      h("caption", { class: "visually-hidden", text: `Results of ${job.title}, one row per image` }),
      h("thead", {}, h("tr", {}, columns.map((column) => h("th", { scope: "col", text: column })))),
      body));
  return {
    element,
    show(indexes) {
      body.replaceChildren(...indexes.map(row));
    },
  };
}

/** A single result's table (one size). */
function pagedTable(job, entries, files) {
  const table = entryTable(job, entries, files);
  table.show(entries.map((_, index) => index));
  return table.element;
}
