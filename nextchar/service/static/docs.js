// Renders /openapi.json as a list of routes with their parameters and responses (an offline
// stand-in for Swagger UI, which would load from a CDN). Descriptions are Markdown (OpenAPI's
// CommonMark), rendered by renderMarkdown below.
"use strict";

// ------------------------------------------------------------------------------ Markdown

// The everyday part of CommonMark, which is what the schema's descriptions use: paragraphs,
// "-", "*", "+" and "1." lists, `code`, **strong**, *emphasis* or _emphasis_, [links](url).
// Safe by construction: code spans are cut out first (nothing in them is markup), the rest is
// HTML-escaped before any tag is added, the only tags added are those above, and a link's URL
// must be http(s), mailto or relative (no javascript:, data:, …).

const ESCAPES = {"&": "&amp;", "<": "&lt;", ">": "&gt;", "\"": "&quot;", "'": "&#39;"};

function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => ESCAPES[c]);
}

const HOLE = "\u0000"; // marks where finished HTML was set aside (removed from the input first)

// One paragraph's or list item's text as HTML.
function inlineMarkdown(text) {
  const holes = []; // finished HTML, put back last, so that emphasis never reaches into it
  const setAside = (html) => HOLE + (holes.push(html) - 1) + HOLE;
  let html = escapeHtml(String(text).split(HOLE).join("").replace(/`([^`]+)`/g, (_, code) =>
    setAside("<code>" + escapeHtml(code) + "</code>")));
  // Escaping adds and removes no ":", so the scheme test sees the URL's own.
  html = html.replace(/\[([^\]]+)\]\(([^()\s\u0000]+)\)/g, (whole, label, url) =>
    /^(https?:|mailto:|[^:]*$)/i.test(url) ? setAside('<a href="' + url + '">') + label + "</a>" : whole);
  html = html
    .replace(/\*\*([^\s*](?:.*?[^\s*])?)\*\*/g, "<strong>$1</strong>")
    .replace(/(^|[^\w*])\*([^\s*](?:[^*]*?[^\s*])?)\*(?![\w*])/g, "$1<em>$2</em>")
    .replace(/(^|[^\w])_([^\s_](?:[^_]*?[^\s_])?)_(?!\w)/g, "$1<em>$2</em>"); // not inside snake_case
  return html.replace(/\u0000(\d+)\u0000/g, (_, i) => holes[Number(i)]);
}

// A description as HTML: paragraphs (blank-line separated, lines joined) and lists.
function renderMarkdown(text) {
  const out = [];
  let paragraph = [];
  let list = null; // {tag: "ul" | "ol", items: [[line, …], …]}
  const flush = () => {
    if (paragraph.length) out.push("<p>" + inlineMarkdown(paragraph.join(" ")) + "</p>");
    if (list) {
      const items = list.items.map((lines) => "<li>" + inlineMarkdown(lines.join(" ")) + "</li>");
      out.push("<" + list.tag + ">" + items.join("") + "</" + list.tag + ">");
    }
    paragraph = [];
    list = null;
  };
  for (const raw of String(text || "").replace(/\r\n?/g, "\n").split("\n")) {
    const line = raw.trim();
    const item = /^(?:([-*+])|\d{1,9}[.)])\s+(.*)$/.exec(line);
    if (!line) {
      flush();
    } else if (item) {
      const tag = item[1] ? "ul" : "ol";
      if (paragraph.length || (list && list.tag !== tag)) flush();
      if (!list) list = {tag: tag, items: []};
      list.items.push([item[2]]);
    } else if (list) {
      list.items[list.items.length - 1].push(line); // a list item's continuation line
    } else {
      paragraph.push(line);
    }
  }
  flush();
  return out.join("");
}

// A block of Markdown as an element (its HTML built only by renderMarkdown above).
function markdownBlock(text, className) {
  const node = document.createElement("div");
  node.className = "md" + (className ? " " + className : "");
  node.innerHTML = renderMarkdown(text);
  return node;
}

// ------------------------------------------------------------------------------ the page

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
  main.append(markdownBlock(spec.info.description));
  for (const [path, ops] of Object.entries(spec.paths)) {
    for (const [method, op] of Object.entries(ops)) {
      const section = el("section", {className: "api-route"});
      section.append(el("h2", {}, el("code", {textContent: method.toUpperCase() + " " + path})));
      if (op.summary) section.append(el("p", {textContent: op.summary}));
      if (op.description) section.append(markdownBlock(op.description, "muted api-description"));
      const params = op.parameters || [];
      if (params.length) {
        const table = el("table", {className: "api-table"},
          el("tr", {}, el("th", {textContent: "parameter"}), el("th", {textContent: "type"}),
             el("th", {textContent: "meaning"})));
        for (const p of params) {
          table.append(el("tr", {}, el("td", {}, el("code", {textContent: p.name + (p.required ? " *" : "")})),
            el("td", {textContent: schemaText(p.schema)}),
            el("td", {}, markdownBlock(p.description || (p.schema && p.schema.description) || ""))));
        }
        section.append(table);
      }
      const responses = el("ul");
      for (const [code, resp] of Object.entries(op.responses || {})) {
        const types = Object.keys(resp.content || {}).join(", ");
        const item = el("li", {textContent: code + ": "});
        item.insertAdjacentHTML("beforeend", inlineMarkdown(resp.description || ""));
        if (types) item.append(" (" + types + ")");
        responses.append(item);
      }
      section.append(responses);
      main.append(section);
    }
  }
}).catch((e) => {
  document.getElementById("api").textContent = "Could not read /openapi.json: " + e;
});
