// The live models table: drawn from the table in the page, then from each table the server
// pushes over the WebSocket when something changes. Only the idle countdown ticks here.
(function () {
  const table = document.getElementById("models");
  const body = table.querySelector("tbody");
  const memory = document.getElementById("memory");
  const message = document.getElementById("model-message");
  const csrf = document.querySelector("#model-csrf [name=csrfmiddlewaretoken]").value;
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";

  function cell(text) {
    const td = document.createElement("td");
    td.textContent = text === null || text === undefined || text === "" ? "–" : String(text);
    return td;
  }

  function countdown(expiresAt) {
    const seconds = Math.max(0, Math.round((new Date(expiresAt) - Date.now()) / 1000));
    return seconds >= 60 ? Math.floor(seconds / 60) + "m" + String(seconds % 60).padStart(2, "0") + "s" : seconds + "s";
  }

  function unloadsIn(row) {
    if (row.state !== "loaded") return "–";
    if (row.expires_at) return countdown(row.expires_at);
    return row.slots_busy || row.queued ? "busy" : "never";
  }

  function stateCell(row) {
    const td = cell(row.state);
    td.className = "state-" + row.state;
    if (row.load_percent !== null) {
      td.textContent = "loading " + row.load_percent + "%";
      const bar = document.createElement("progress");
      bar.max = 100;
      bar.value = row.load_percent;
      td.appendChild(bar);
    }
    if (row.error) td.title = row.error;
    return td;
  }

  function button(action, label, model) {
    const element = document.createElement("button");
    element.type = "button";
    element.dataset.action = action;
    element.dataset.model = model;
    element.textContent = label;
    return element;
  }

  function actions(row) {
    const td = document.createElement("td");
    if (row.state === "unloaded" || row.state === "failed") td.appendChild(button("load", "Load", row.name));
    if (row.state === "loaded" || row.state === "loading") td.appendChild(button("unload", "Unload", row.name));
    td.appendChild(row.pinned ? button("unpin", "Unpin", row.name) : button("pin", "Pin", row.name));
    return td;
  }

  function draw(current) {
    body.replaceChildren();
    current.models.forEach((row) => {
      const tr = document.createElement("tr");
      tr.dataset.model = row.name;
      tr.dataset.state = row.state;
      const expires = cell(unloadsIn(row));
      if (row.state === "loaded" && row.expires_at) expires.dataset.expiresAt = row.expires_at;
      const hits = row.cache_hit_rate === null ? null : Math.round(row.cache_hit_rate * 100) + "%";
      tr.append(
        cell(row.name), stateCell(row), cell(row.memory_mb === null ? null : row.memory_mb + " MB"),
        cell(row.capabilities.join(", ") || "–"),
        cell(row.slots_busy + " / " + row.parallel), cell(row.queued), expires, cell(row.pinned ? "yes" : "no"),
        cell(row.requests_today), cell(row.prompt_tokens_today + row.completion_tokens_today), cell(hits),
        cell(row.last_load_reason), actions(row),
      );
      body.appendChild(tr);
    });
    if (!current.models.length) body.innerHTML = '<tr class="waiting"><td colspan="13">No models.</td></tr>';
    memory.textContent = "Loaded: about " + current.memory_loaded_mb + " MB" +
      (current.memory_budget_mb ? " of the " + current.memory_budget_mb + " MB budget (max_memory_mb)" : " (no memory budget)");
  }

  async function act(action, model) {
    message.classList.remove("error");
    message.textContent = action + " " + model + "…";
    const form = new FormData();
    form.append("model", model);
    try {
      const response = await fetch(table.dataset.actions + action + "/", {
        method: "POST", body: form, headers: {"X-CSRFToken": csrf}, credentials: "same-origin",
      });
      const answer = await response.json();
      message.textContent = answer.message || answer.error;
      message.classList.toggle("error", !response.ok);
    } catch (error) {
      message.textContent = "The server did not answer: " + error;
      message.classList.add("error");
    }
  }

  body.addEventListener("click", (event) => {
    const target = event.target.closest("button[data-action]");
    if (target) act(target.dataset.action, target.dataset.model);
  });

  setInterval(() => {
    body.querySelectorAll("[data-expires-at]").forEach((td) => { td.textContent = countdown(td.dataset.expiresAt); });
  }, 1000);

  function connect() {
    const socket = new WebSocket(scheme + "//" + location.host + "/ws/dashboard/models/");
    socket.onopen = () => document.body.dataset.feed = "open";
    socket.onmessage = (event) => draw(JSON.parse(event.data));
    socket.onclose = () => { document.body.dataset.feed = "closed"; setTimeout(connect, 3000); };
  }

  draw(JSON.parse(document.getElementById("model-table").textContent));
  connect();
})();
