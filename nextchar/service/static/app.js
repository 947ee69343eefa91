// The nextchar page: a search box with a suggestion drop-down (an ARIA 1.2 combobox), a bar
// chart of the next character's probabilities, and an email editor with ghost-text completion.
// Plain JavaScript, no build step, nothing from the internet: everything comes from /api/complete.
"use strict";

const K = 8;            // suggestions in the drop-down
const CHART_ROWS = 10;  // bars in the next-character chart
const MAX_QUERY = 1000; // the server's bound on q, in characters

// Characters that are invisible as themselves.
function visible(ch) {
  return ch === " " ? "␣" : ch === "\n" ? "⏎" : ch === "\t" ? "⇥" : ch;
}

// One request stream whose answers may arrive in any order: an answer is used only if no later
// request has been answered already, and only if it still matches what is on screen (`current`).
// `failed` (optional) is called when this request fails and no later one has been sent.
function latestOnly(current, apply) {
  let sent = 0;
  let shown = 0;
  return function request(q, extra, failed) {
    const seq = ++sent;
    const params = new URLSearchParams({q: q, ...extra});
    fetch("/api/complete?" + params.toString(), {headers: {Accept: "application/json"}})
      .then((r) => (r.ok ? r.json() : Promise.reject(new Error("HTTP " + r.status))))
      .then((data) => {
        if (seq <= shown || data.q !== current()) return; // out of order, or the text moved on
        shown = seq;
        apply(data);
      })
      .catch(() => {
        // A failed suggestion is just no suggestion; the next keystroke retries.
        if (failed && seq === sent) failed();
      });
  };
}

// ------------------------------------------------------------------------------ the search box

const search = document.getElementById("search");
const list = document.getElementById("suggestions");
const searchStatus = document.getElementById("search-status");
const typos = document.getElementById("typos");
const chosen = document.getElementById("chosen");
let items = [];   // the suggestions on screen
let active = -1;  // the highlighted one (-1: none, the typed text)
let wantOpen = false;

function isOpen() { return !list.hidden; }

function open() {
  if (!items.length || document.activeElement !== search) return;
  list.hidden = false;
  search.setAttribute("aria-expanded", "true");
}

function close() {
  list.hidden = true;
  search.setAttribute("aria-expanded", "false");
  setActive(-1);
}

function setActive(i) {
  active = i;
  list.querySelectorAll("[role=option]").forEach((li, j) => {
    li.setAttribute("aria-selected", j === i ? "true" : "false");
  });
  if (i >= 0) {
    const li = document.getElementById("suggestion-" + i);
    search.setAttribute("aria-activedescendant", li.id);
    li.scrollIntoView({block: "nearest"});
  } else {
    search.removeAttribute("aria-activedescendant");
  }
}

function shownText(s) { return s.text.replace(/\n+$/, ""); }

// Replace the whole list in one DOM operation (no flicker: the old list stays until then).
function render(suggestions) {
  const seen = new Set();
  items = suggestions.filter((s) => {
    const t = shownText(s);
    if (!t || seen.has(t)) return false;
    seen.add(t);
    return true;
  });
  const rows = items.map((s, i) => {
    const li = document.createElement("li");
    li.id = "suggestion-" + i;
    li.setAttribute("role", "option");
    li.setAttribute("aria-selected", "false");
    li.dataset.text = shownText(s);
    const text = shownText(s);
    const added = s.completion.replace(/\n+$/, "");
    const typed = document.createElement("span");
    typed.className = "typed";
    typed.textContent = text.slice(0, text.length - added.length);
    const bold = document.createElement("b");
    bold.textContent = added;
    li.append(typed, bold);
    if (s.corrected) {
      li.classList.add("corrected");
      const note = document.createElement("span");
      note.className = "note";
      note.textContent = "corrected";
      li.append(note);
    }
    li.title = (100 * Math.exp(s.logprob)).toPrecision(2) + "% likely";
    return li;
  });
  list.replaceChildren(...rows);
  active = -1;
  search.removeAttribute("aria-activedescendant");
  searchStatus.textContent = items.length ? items.length + " suggestions; use the up and down arrows to choose" : "";
  if (!items.length) close();
}

function choose(i) {
  const text = items[i].text.replace(/\n+$/, "");
  search.value = text;
  close();
  chosen.textContent = "Chosen: " + text;
  wantOpen = false;
  requestSearch(search.value, false);
}

let searchesAsked = 0;
const requestSearch = (() => {
  const send = latestOnly(() => search.value.slice(-MAX_QUERY), (data) => {
    render(data.suggestions);
    chart(data.next_chars, data.q);
    if (wantOpen && data.q.length) open();
  });
  return (text, openList, failed) => {
    searchesAsked++;
    wantOpen = openList;
    const extra = {k: K};
    if (typos.checked) extra.typos = "1";
    send(text.slice(-MAX_QUERY), extra, failed);
  };
})();

search.addEventListener("input", () => {
  if (!search.value) close();
  requestSearch(search.value, search.value.length > 0);
});

search.addEventListener("keydown", (e) => {
  const n = items.length;
  switch (e.key) {
    case "ArrowDown":
      e.preventDefault();
      if (!isOpen()) { open(); return; }
      setActive(active + 1 >= n ? -1 : active + 1);
      break;
    case "ArrowUp":
      e.preventDefault();
      if (!isOpen()) { open(); return; }
      setActive(active <= -1 ? n - 1 : active - 1);
      break;
    case "Enter":
      e.preventDefault(); // there is no search engine behind the box: choosing is the point
      if (isOpen() && active >= 0) choose(active);
      else { close(); chosen.textContent = "Searched for: " + search.value; }
      break;
    case "Escape":
      if (isOpen()) { e.preventDefault(); close(); }
      break;
    case "Tab":
      close();
      break;
  }
});

search.addEventListener("blur", () => close());
search.addEventListener("focus", () => { if (search.value) open(); });
typos.addEventListener("change", () => requestSearch(search.value, false));

// Mouse: mousedown would blur the input (closing the list) before the click lands; prevent that.
list.addEventListener("mousedown", (e) => e.preventDefault());
list.addEventListener("click", (e) => {
  const li = e.target.closest("[role=option]");
  if (li) choose(Number(li.id.slice("suggestion-".length)));
});
list.addEventListener("mousemove", (e) => {
  const li = e.target.closest("[role=option]");
  if (li) {
    const i = Number(li.id.slice("suggestion-".length));
    if (i !== active) setActive(i);
  }
});

// ------------------------------------------------------------------------------ the bar chart

const chartList = document.getElementById("chart");
const chartContext = document.getElementById("chart-context");
const bars = [];
for (let i = 0; i < CHART_ROWS; i++) {
  // Fixed rows updated in place: the bars slide (CSS transition) instead of being redrawn.
  const li = document.createElement("li");
  const label = document.createElement("span");
  label.className = "char";
  const track = document.createElement("span");
  track.className = "track";
  const fill = document.createElement("span");
  fill.className = "fill";
  track.append(fill);
  const pct = document.createElement("span");
  pct.className = "pct";
  li.append(label, track, pct);
  chartList.append(li);
  bars.push({li, label, fill, pct});
}

function chart(nextChars, q) {
  chartContext.textContent = q.length > 40 ? "…" + q.slice(-40) : q;
  const top = nextChars.length ? nextChars[0].probability : 1;
  bars.forEach((bar, i) => {
    const c = nextChars[i];
    bar.li.hidden = !c;
    if (!c) return;
    const percent = (100 * c.probability).toFixed(1);
    bar.label.textContent = visible(c.char);
    bar.fill.style.width = (100 * c.probability / top).toFixed(1) + "%";
    bar.pct.textContent = percent + "%";
    bar.li.setAttribute("aria-label", (c.char === " " ? "space" : c.char === "\n" ? "end of line" : c.char) +
                        ": " + percent + "%");
  });
}

// ------------------------------------------------------------------------------ the email editor

const email = document.getElementById("email");
const ghostTyped = document.getElementById("ghost-typed");
const ghostText = document.getElementById("ghost-text");
const ghostBox = document.getElementById("ghost");
const ghostHint = document.getElementById("ghost-hint");
let ghost = "";

// The context sent to the model: the text, or for a long text its tail from a sentence start
// (a start that stays put while typing, so the server's state cache keeps hitting).
function emailContext() {
  const text = email.value;
  if (text.length <= MAX_QUERY) return text;
  const tail = text.slice(-MAX_QUERY);
  const m = /[.!?]\s+|\n/.exec(tail);
  return m ? tail.slice(m.index + m[0].length) : tail;
}

function caretAtEnd() {
  return email.selectionStart === email.value.length && email.selectionEnd === email.value.length;
}

function showGhost(text) {
  ghost = text;
  ghostTyped.textContent = email.value;
  ghostText.textContent = ghost;
  ghostBox.scrollTop = email.scrollTop;
  ghostHint.textContent = ghost ? "Suggestion: " + ghost + ". Press Tab to accept." : "";
}

// What the ghost shows of a completion: up to its first line end, and never past a sentence end.
function sentencePart(completion) {
  const text = completion.replace(/\n[\s\S]*$/, "");
  const m = /[.!?](\s|$)/.exec(text);
  return m ? text.slice(0, m.index + 1) : text;
}

const requestGhost = latestOnly(emailContext, (data) => {
  if (!caretAtEnd()) return showGhost("");
  const best = data.suggestions.find((s) => !s.corrected);
  showGhost(best ? sentencePart(best.completion) : "");
});

let lastEmail = "";
email.addEventListener("input", () => {
  const text = email.value;
  // Typing what the ghost predicted keeps the rest of it on screen until the new answer arrives.
  if (ghost && text.length === lastEmail.length + 1 && text.startsWith(lastEmail) && ghost[0] === text.slice(-1)) {
    showGhost(ghost.slice(1));
  } else {
    showGhost("");
  }
  lastEmail = text;
  // Phrase mode whatever the server's default: the next word or few (--max-words), as inline
  // completion in a mail editor offers them; a whole line of guesses would mostly be wrong.
  if (text && caretAtEnd()) requestGhost(emailContext(), {k: 3, mode: "phrase"});
});

email.addEventListener("keydown", (e) => {
  if (e.key === "Tab" && ghost && caretAtEnd() && !e.shiftKey) {
    e.preventDefault(); // Tab moves focus as usual when there is nothing to accept
    const accepted = ghost;
    email.setRangeText(accepted, email.value.length, email.value.length, "end");
    showGhost("");
    email.dispatchEvent(new Event("input", {bubbles: true}));
    ghostHint.textContent = "Accepted: " + accepted;
  } else if (e.key === "Escape" && ghost) {
    e.preventDefault();
    showGhost("");
  }
});
email.addEventListener("scroll", () => { ghostBox.scrollTop = email.scrollTop; });
// Ghost text belongs at the end of the text: moving the caret away (keys, mouse) dismisses it.
document.addEventListener("selectionchange", () => {
  if (ghost && document.activeElement === email && !caretAtEnd()) showGhost("");
});
email.addEventListener("blur", () => showGhost(""));

// ------------------------------------------------------------------------------ start

fetch("/healthz").then((r) => r.json()).then((h) => {
  document.getElementById("model-info").textContent =
    "Model: " + h.model + " (" + h.kind + ", " + h.format + ").";
}).catch(() => {});

// The chart (and the drop-down's first list) for the text already there on load, empty or from
// ?q=: drawn without waiting for a key. A first answer that fails (the server restarting, a
// 503) is asked for again a few times, until anything else has been asked since.
function drawInitial(attempt) {
  requestSearch(search.value, false, () => {
    const asked = searchesAsked;
    if (attempt < 5) setTimeout(() => { if (searchesAsked === asked) drawInitial(attempt + 1); }, 250 * 2 ** attempt);
  });
}

const initial = new URLSearchParams(location.search).get("q");
if (initial) search.value = initial;
drawInitial(0);
