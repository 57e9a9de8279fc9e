// The rollout viewer's entry point: take the API key (from the URL fragment #key=... or the
// form), check it by reading this service's viewer config, then open the panels the service
// offers (simulator: imagine, recorded runs; trainer: jobs).

import { API_ROOT, describeError, getKey, request, setKey } from "./api.js";
import { ImaginePanel } from "./imagine.js";
import { JobsPanel } from "./jobs.js";
import { el } from "./player.js";
import { RunsPanel } from "./runs.js";

const $ = (id) => document.getElementById(id);
const PANELS = { imagine: ["Imagine", ImaginePanel], runs: ["Recorded runs", RunsPanel], jobs: ["Jobs", JobsPanel] };

function showError(message) {
  const box = $("error");
  box.textContent = message || "";
  box.hidden = !message;
}

// The fragment's parameters; a key there moves to sessionStorage and leaves the address bar
// (and the history), so it is not shared with a copied link.
function readFragment() {
  const params = new URLSearchParams(window.location.hash.slice(1));
  if (params.has("key")) {
    setKey(params.get("key"));
    params.delete("key");
    const rest = params.toString();
    window.history.replaceState(null, "", window.location.pathname + window.location.search + (rest ? "#" + rest : ""));
  }
  return params;
}

let started = false;

async function start(fragment) {
  let config;
  try {
    config = await request("viewer/config.json");
  } catch (err) {
    $("service").textContent = "not connected";
    document.body.dataset.state = "error";
    showError(describeError(err));
    if (err.status === 401) $("key-input").focus();
    return;
  }
  showError(null);
  if (started) return; // a new key after a refusal: the panels are already up
  started = true;
  document.body.dataset.state = "ready";
  document.querySelector("main").hidden = false;
  $("service").textContent = `${config.service} ${config.version} at ${API_ROOT.host}`;
  const tabs = $("tabs");
  tabs.replaceChildren();
  const wanted = fragment.get("panel");
  const panels = config.panels.filter((name) => name in PANELS);
  const first = panels.includes(wanted) ? wanted : panels[0];
  for (const name of panels) {
    const [title, Panel] = PANELS[name];
    const button = el("button", { type: "button", className: "tab", dataset: { panel: name } }, title);
    button.addEventListener("click", () => select(name));
    tabs.append(button);
    new Panel(config, showError, fragment);
  }
  select(first);
}

function select(name) {
  for (const tab of document.querySelectorAll(".tab")) tab.classList.toggle("active", tab.dataset.panel === name);
  for (const panel of document.querySelectorAll(".panel")) panel.hidden = panel.id !== `panel-${name}`;
}

const fragment = readFragment();
$("key-input").value = getKey();
$("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  setKey($("key-input").value.trim());
  start(fragment);
});
$("key-forget").addEventListener("click", () => {
  setKey("");
  $("key-input").value = "";
});
start(fragment);
