// Renders /openapi.json as a list of routes with their parameters and responses (an offline
// stand-in for Swagger UI, which would load from a CDN).
"use strict";

function el(tag, props, ...children) {
  const node = document.createElement(tag);
  Object.assign(node, props || {});
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
}

function schemaText(schema) {
  if (!schema) return "";
  if (schema.$ref) return schema.$ref.split("/").pop();
  if (schema.anyOf) return schema.anyOf.map(schemaText).join(" | ");
  if (schema.enum) return schema.enum.map((v) => JSON.stringify(v)).join(" | ");
  const bounds = [];
  if (schema.minimum !== undefined) bounds.push("≥ " + schema.minimum);
  if (schema.maximum !== undefined) bounds.push("≤ " + schema.maximum);
  if (schema.maxLength !== undefined) bounds.push("≤ " + schema.maxLength + " chars");
  return (schema.type || "any") + (bounds.length ? " (" + bounds.join(", ") + ")" : "") +
    (schema.default !== undefined ? ", default " + JSON.stringify(schema.default) : "");
}

fetch("/openapi.json").then((r) => r.json()).then((spec) => {
  const main = document.getElementById("api");
  main.append(el("p", {textContent: spec.info.description || ""}));
  for (const [path, ops] of Object.entries(spec.paths)) {
    for (const [method, op] of Object.entries(ops)) {
      const section = el("section", {className: "api-route"});
      section.append(el("h2", {}, el("code", {textContent: method.toUpperCase() + " " + path})));
      if (op.summary) section.append(el("p", {textContent: op.summary}));
      if (op.description) section.append(el("p", {className: "muted", textContent: op.description}));
      const params = op.parameters || [];
      if (params.length) {
        const table = el("table", {className: "api-table"},
          el("tr", {}, el("th", {textContent: "parameter"}), el("th", {textContent: "type"}),
             el("th", {textContent: "meaning"})));
        for (const p of params) {
          table.append(el("tr", {}, el("td", {}, el("code", {textContent: p.name + (p.required ? " *" : "")})),
            el("td", {textContent: schemaText(p.schema)}),
            el("td", {textContent: p.description || (p.schema && p.schema.description) || ""})));
        }
        section.append(table);
      }
      const responses = el("ul");
      for (const [code, resp] of Object.entries(op.responses || {})) {
        const types = Object.keys(resp.content || {}).join(", ");
        responses.append(el("li", {textContent: code + ": " + (resp.description || "") + (types ? " (" + types + ")" : "")}));
      }
      section.append(responses);
      main.append(section);
    }
  }
}).catch((e) => {
  document.getElementById("api").textContent = "Could not read /openapi.json: " + e;
});
