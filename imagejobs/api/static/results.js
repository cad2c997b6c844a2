// How a finished job's result is shown: a thumbnail, a plot, labels with score bars, or tables for batches.
// What to show is read from the result itself (a path, a plot, predictions, a size), never from the action's name.
import { baseName, h, plural } from "./dom.js";

const ROWS_SHOWN = 100; // a batch of thousands shows this many rows, then a button for the rest

/**
 * The element showing a finished job's result.
 * job: {id, action, title, subject}; loadFile(path) resolves with a blob: URL of a file the service serves.
 */
export function resultView(job, result, loadFile) {
  if (!result || typeof result !== "object") return h("p", { text: "The job finished without a result." });
  if (Array.isArray(result.images)) return batchView(job, result, loadFile);
  if (typeof result.plot === "string") {
    return fileFigure(result.plot, `Chart: ${job.title}`, `plot-${job.id}.png`,
      loadFile, "plot", null, "Download the PNG");
  }
  if (Array.isArray(result.predictions)) return predictionsView(result);
  if (typeof result.path === "string") {
    const name = baseName(result.path);
    return fileFigure(`/result/file?jobId=${encodeURIComponent(job.id)}`, `Thumbnail of ${job.subject}, ${result.width} by ${result.height} pixels`,
      name, loadFile, "thumbnail", `${result.width} × ${result.height} px · ${result.format}`, `Download ${name}`);
  }
  if ("width" in result && "height" in result) return table(job, [{ image: job.subject, result }], null);
  return h("pre", { class: "raw", text: JSON.stringify(result, null, 2) });
}

/** An image the service serves, fetched as a blob (so the token goes along), with a download link. */
function fileFigure(path, alt, downloadName, loadFile, kind, caption, linkText) {
  const status = h("p", { class: "hint", text: "Loading the image…" });
  const img = h("img", { alt, class: kind, decoding: "async" });
  const link = h("a", { class: "download", download: downloadName, text: linkText });
  const figure = h("figure", { class: `file ${kind}`, "aria-busy": "true" }, status);
  loadFile(path).then(
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

function predictionsView(result) {
  return h("div", { class: "classification" },
    predictionList(result.predictions),
    result.model ? h("p", { class: "hint", text: `Model: ${result.model}` }) : null);
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
  { name: "thumbnails", test: (result) => typeof result.path === "string", columns: ["Image", "Thumbnail (px)", "Format", "Thumbnail"] },
  { name: "sizes", test: (result) => "mode" in result, columns: ["Image", "Size (px)", "Format", "Mode"] },
];
const OTHER = { name: "other", columns: ["Image", "Result"] };

function kindOf(result) {
  return KINDS.find((kind) => kind.test(result || {})) || OTHER;
}

/** A batch entry's thumbnail (GET /result/file?jobId=&index=), fetched with the token, and its download link. */
function entryThumbnail(job, index, result, loadFile) {
  const name = baseName(result.path ?? "");
  const img = h("img", { alt: `Thumbnail ${name}`, class: "entry-thumb", decoding: "async", width: result.width, height: result.height });
  const link = h("a", { class: "download file-name", download: name, text: name });
  loadFile(`/result/file?jobId=${encodeURIComponent(job.id)}&index=${index}`).then(
    (url) => { img.src = url; link.href = url; },
    () => img.remove(),
  );
  return h("span", { class: "entry-file" }, img, link);
}

function cells(job, index, kind, result, loadFile) {
  if (kind.name === "labels") return [predictionList(result.predictions || [])];
  if (kind.name === "thumbnails") {
    return [`${result.width} × ${result.height}`, result.format ?? "", entryThumbnail(job, index, result, loadFile)];
  }
  if (kind.name === "sizes") return [`${result.width} × ${result.height}`, result.format ?? "", result.mode ?? ""];
  return [h("code", { text: JSON.stringify(result) })];
}

function table(job, entries, loadFile) {
  const kind = kindOf(entries.find((entry) => entry.result)?.result);
  const columns = kind.columns;
  const body = h("tbody");
  const addRows = (from, to) => {
    for (let index = from; index < Math.min(to, entries.length); index += 1) {
      const entry = entries[index];
      const name = h("th", { scope: "row", class: "image-name", text: shownName(job, entry.image) });
      if ("error" in entry) {
        body.append(h("tr", { class: "failed" }, name,
          h("td", { colspan: columns.length - 1, class: "error-text" }, h("strong", { text: "Failed: " }), entry.error)));
      } else {
        body.append(h("tr", {}, name, cells(job, index, kind, entry.result || {}, loadFile)
          .map((cell, column) => h("td", { "data-label": columns[column + 1] }, cell))));
      }
    }
  };
  addRows(0, ROWS_SHOWN);
  const wrapper = h("div", { class: "table-wrap" },
    h("table", { class: `results ${kind.name}` },
      h("caption", { class: "visually-hidden", text: `Results of ${job.title}, one row per image` }),
      h("thead", {}, h("tr", {}, columns.map((column) => h("th", { scope: "col", text: column })))),
      body));
  if (entries.length > ROWS_SHOWN) {
    const more = h("button", {
      type: "button", class: "secondary small", text: `Show all ${entries.length} rows`,
      onclick: () => { addRows(ROWS_SHOWN, entries.length); more.remove(); },
    });
    wrapper.append(more);
  }
  return wrapper;
}

function batchView(job, result, loadFile) {
  const total = result.total ?? result.images.length;
  const failed = result.failed ?? result.images.filter((entry) => "error" in entry).length;
  const done = result.done ?? total - failed;
  const summary = h("p", { class: "batch-summary" },
    `${plural(total, "image")}: ${done} done`,
    failed ? h("span", { class: "error-text", text: `, ${failed} failed` }) : null, ".");
  const shown = table(job, result.images, loadFile);
  const notes = shown.querySelector("table.thumbnails")
    ? h("p", { class: "hint", text: "Each thumbnail is saved under resized/ in the images root, in a folder named like its source's." })
    : null;
  return h("div", { class: "batch" }, summary, shown, notes);
}
