// Calls to the service: every one carries the token once there is one, and a 401 asks for it (once at a time).

const TOKEN_KEY = "imageapi.token";
const listeners = new Set();
let asking = null; // the pending question, shared by every call that got a 401 meanwhile
let tokenWaiters = [];

export function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

export function onTokenChange(listener) {
  listeners.add(listener);
}

function setToken(value) {
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  else sessionStorage.removeItem(TOKEN_KEY);
  for (const listener of listeners) listener(value);
  if (value) {
    const waiting = tokenWaiters;
    tokenWaiters = [];
    waiting.forEach((resolve) => resolve(value));
  }
}

export function forgetToken() {
  setToken("");
}

/** Resolves once a token is saved (after the user was asked, or asks again through the header's button). */
export function whenToken() {
  return new Promise((resolve) => tokenWaiters.push(resolve));
}

/** Ask for a token in the page's dialog; resolves with it, or with "" if the user cancels. */
export function askToken(message) {
  if (asking) return asking;
  const dialog = document.getElementById("token-dialog");
  const form = document.getElementById("token-form");
  const input = document.getElementById("token-input");
  const error = document.getElementById("token-error");
  error.hidden = !message;
  error.textContent = message || "";
  input.value = "";
  asking = new Promise((resolve) => {
    const done = () => {
      dialog.removeEventListener("close", done);
      asking = null;
      const given = dialog.returnValue === "ok" ? input.value.trim() : "";
      input.value = "";
      if (given) setToken(given);
      resolve(given);
    };
    dialog.returnValue = "";
    dialog.addEventListener("close", done);
    dialog.showModal();
    input.focus();
  });
  return asking;
}

// The dialog's form: "Use this token" (also Enter) closes it with "ok" unless the field is empty; Cancel and Esc with "".
document.getElementById("token-form")?.addEventListener("submit", (event) => {
  const input = document.getElementById("token-input");
  if (!input.value.trim()) {
    event.preventDefault();
    const error = document.getElementById("token-error");
    error.hidden = false;
    error.textContent = "Type the token, or choose Cancel.";
    input.focus();
  }
});
document.getElementById("token-cancel")?.addEventListener("click", () => {
  document.getElementById("token-dialog").close("");
});

/**
 * fetch() against the service with the token. On a 401 it asks for a token (or a better one) and
 * tries again; if the user cancels, the 401 response is returned for the caller to report.
 */
export async function api(path, options = {}) {
  let refused = false;
  for (;;) {
    const headers = new Headers(options.headers || {});
    const current = token();
    if (current) headers.set("Authorization", `Bearer ${current}`);
    const response = await fetch(path, { ...options, headers, credentials: "same-origin" });
    if (response.status !== 401) return response;
    if (options.body instanceof ReadableStream) return response; // cannot be sent twice
    const given = await askToken(refused || current ? "The service refused that token; check it and try again." : "");
    if (!given) {
      if (current === token()) setToken("");
      return response;
    }
    refused = true;
  }
}

/** The JSON body of an answer, or {} (the service always answers JSON, but a proxy may not). */
export async function readJson(response) {
  try {
    return await response.json();
  } catch {
    return {};
  }
}

/** One sentence for an error answer. */
export async function errorSentence(response) {
  const body = await readJson(response);
  if (body && typeof body.error === "string" && body.error) return body.error;
  return `The service answered ${response.status} ${response.statusText || ""}`.trim() + ".";
}

/** A blob: URL of a file the service serves (a thumbnail, a plot), fetched with the token. */
export async function blobUrl(path) {
  const response = await api(path);
  if (!response.ok) throw new Error(await errorSentence(response));
  return URL.createObjectURL(await response.blob());
}

/**
 * Save a file the service serves (a batch's zip) under `name`: fetched with the token as a blob, then
 * handed to the browser's download through a link. Rejects with a sentence if the service refuses.
 */
export async function saveFile(path, name) {
  const url = await blobUrl(path);
  const link = document.createElement("a");
  link.href = url;
  link.download = name;
  link.hidden = true;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000); // the download has long started by then
}
