// A small element builder: text is always set as text, never parsed as HTML.

export function h(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "class") element.className = value;
    else if (name === "text") element.textContent = value;
    else if (name === "style" && typeof value === "object") Object.assign(element.style, value);
    else if (name.startsWith("on") && typeof value === "function") element.addEventListener(name.slice(2), value);
    else if (name in element && typeof value !== "string") element[name] = value;
    else element.setAttribute(name, value === true ? "" : String(value));
  }
  append(element, children);
  return element;
}

function append(element, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** An inline icon from the page's sprite, hidden from assistive technology. */
export function icon(name, extra = "") {
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("class", `icon ${extra}`.trim());
  svg.setAttribute("aria-hidden", "true");
  svg.setAttribute("focusable", "false");
  const use = document.createElementNS("http://www.w3.org/2000/svg", "use");
  use.setAttribute("href", `#i-${name}`);
  svg.append(use);
  return svg;
}

/** A sentence for screen readers, through the page's polite live region (the last five are kept). */
export function announce(text) {
  const announcer = document.getElementById("announcer");
  if (!announcer) return;
  announcer.append(h("p", { text }));
  while (announcer.childElementCount > 5) announcer.firstElementChild.remove();
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** A count as the page shows it: 10,000. */
export function number(count) {
  return Number(count).toLocaleString("en");
}

export function plural(count, word, many = `${word}s`) {
  return `${number(count)} ${count === 1 ? word : many}`;
}

/** A file name as text that may wrap after _ - / (not inside a word, nor before its extension), for narrow boxes. */
export function breakable(text) {
  return String(text).split(/(?<=[_\-/])/).flatMap((part, index) => (index ? [document.createElement("wbr"), part] : [part]));
}

export function baseName(path) {
  return String(path).split(/[\\/]/).filter(Boolean).pop() || String(path);
}

export function formatBytes(bytes) {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(bytes < 10240 ? 1 : 0)} KB`;
  return `${(bytes / 1024 / 1024).toFixed(1)} MB`;
}
