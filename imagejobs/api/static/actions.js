// The actions the service offers, their parameters and its limits, as GET /actions describes them: the
// form's action choices and option fields are built from it, so nothing here names an action.
import { h } from "./dom.js";

/** {default, actions: [...], limits: {...}} from the service. */
export async function loadCatalogue(api) {
  const response = await api("/actions");
  if (!response.ok) throw new Error(`GET /actions answered ${response.status}`);
  return response.json();
}

/** The id of a parameter's control: its name, unless another action already took it. */
function controlId(action, field, taken) {
  const id = taken.has(field.name) ? `${action.name}-${field.name}` : field.name;
  taken.add(id);
  return id;
}

/** The sentence the page shows when a number is out of its range. */
export function rangeMessage(field) {
  const unit = field.unitName ? ` of ${field.unitName}` : "";
  return `${field.title} must be a whole number${unit} from ${field.minimum} to ${field.maximum}.`;
}

function label(field) {
  if (field.type === "integer") return `${field.title} (${field.unit || `${field.minimum}-${field.maximum}`})`;
  return field.title;
}

function control(field, id) {
  const error = h("p", { class: "field-error", id: `${id}-error`, hidden: true });
  if (field.type === "choice") {
    const choices = (field.optional ? [""] : []).concat(field.choices);
    const select = h("select", { id, name: field.name, "aria-describedby": `${id}-error` },
      choices.map((value) => h("option", {
        value, selected: value === (field.default ?? ""),
        text: value === "" ? field.unsetLabel || "none" : (field.labels || {})[value] || value,
      })));
    return h("div", { class: "field" }, h("label", { for: id, text: label(field) }), select, error);
  }
  if (field.type === "boolean") {
    return h("div", { class: "field" },
      h("label", { class: "check" }, h("input", { type: "checkbox", id, name: field.name, checked: Boolean(field.default) }),
        ` ${field.title}`), error);
  }
  if (field.type === "string") {
    const input = h("input", {
      type: "text", id, name: field.name, value: field.default ?? "", maxlength: field.maxLength ?? undefined,
      placeholder: field.example ? `e.g. ${field.example}` : undefined, "aria-describedby": `${id}-error`,
    });
    return h("div", { class: "field" }, h("label", { for: id, text: label(field) }), input, error);
  }
  const input = h("input", {
    type: "number", id, name: field.name, value: field.default ?? "", min: field.minimum ?? undefined,
    max: field.maximum ?? undefined, step: 1, required: field.required || field.default !== undefined,
    inputmode: "numeric", "aria-describedby": `${id}-error`, "data-message": rangeMessage(field),
  });
  return h("div", { class: "field" }, h("label", { for: id, text: label(field) }), input, error);
}

/** The action radios and one fieldset of options per action, from the catalogue. */
export function renderActions(catalogue, choices, optionsArea) {
  const taken = new Set();
  choices.replaceChildren(...catalogue.actions.map((action) => h("label", {},
    h("input", { type: "radio", name: "action", value: action.name, checked: action.name === catalogue.default }),
    ` ${action.summary}`)));
  optionsArea.replaceChildren(...catalogue.actions.map((action) => {
    const fields = action.parameters.map((field) => {
      const shown = control(field, controlId(action, field, taken));
      if (field.needs) shown.dataset.needs = JSON.stringify(field.needs);
      return shown;
    });
    return h("fieldset", { class: "options", "data-action": action.name },
      h("legend", { class: "visually-hidden", text: `${action.summary} options` }),
      fields.length ? h("div", { class: fields.length > 1 ? "grid" : "narrow" }, fields) : null,
      action.description ? h("p", { class: "hint", text: action.description }) : null);
  }));
  optionsArea.querySelectorAll(".options").forEach(offerWhatApplies);
  optionsArea.addEventListener("change", (event) => offerWhatApplies(event.target.closest(".options")));
}

/** Show a field only while the other fields it needs hold their values (gravity and focus need fit=cover):
 * hidden, it is disabled, so it is neither checked nor sent. */
function offerWhatApplies(fieldset) {
  for (const field of fieldset.querySelectorAll(".field[data-needs]")) {
    const needs = Object.entries(JSON.parse(field.dataset.needs));
    const applies = needs.every(([name, value]) => fieldset.querySelector(`[name="${name}"]`)?.value === value);
    field.hidden = !applies;
    field.querySelectorAll("input, select").forEach((control) => { control.disabled = !applies; });
  }
}

/** The values of an action's option fields, as the API takes them (an unset choice is left out). */
export function optionsOf(fieldset) {
  const options = {};
  for (const control of fieldset.querySelectorAll("input:enabled, select:enabled")) {
    if (control.type === "checkbox") options[control.name] = control.checked;
    else if (control.type === "number") options[control.name] = Number(control.value);
    else if (control.value !== "") options[control.name] = control.value;
  }
  return options;
}

/** A job's title from its action's template: {name} is the value, {, name|upper} adds ", VALUE" when set. */
export function titleOf(action, options) {
  return action.title.replace(/\{([^{}\w]*)(\w+)(\|upper)?\}/g, (_, prefix, name, upper) => {
    const value = options[name];
    if (value === undefined || value === "") return "";
    return prefix + (upper ? String(value).toUpperCase() : String(value));
  });
}

/** A regular expression matching the file names the service takes as images. */
export function imageNamePattern(limits) {
  const endings = limits.imageExtensions.map((extension) => extension.replace(/^\./, "").replace(/[^\w]/g, ""));
  return new RegExp(`\\.(${endings.join("|")})$`, "i");
}
