// Model pulls: each change arrives over a WebSocket (no polling) and updates its row; Cancel
// asks the server to stop a pull (CSRF-protected POST).
(function () {
  const table = document.querySelector("#pulls");
  const body = table.querySelector("tbody");
  const csrf = document.querySelector("#pull-form [name=csrfmiddlewaretoken]").value;
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";

  function size(bytes) {
    const units = ["B", "kB", "MB", "GB", "TB"];
    let unit = 0;
    while (bytes >= 1000 && unit < units.length - 1) { bytes /= 1000; unit += 1; }
    return (unit ? bytes.toFixed(1) : String(bytes)) + " " + units[unit];
  }

  function duration(seconds) {
    if (seconds === null || seconds === undefined) return "--:--";
    const minutes = Math.floor(seconds / 60), hours = Math.floor(minutes / 60);
    const pad = (n) => String(n).padStart(2, "0");
    return (hours ? hours + ":" + pad(minutes % 60) : String(minutes)) + ":" + pad(seconds % 60);
  }

  function row(pull) {
    let tr = body.querySelector(`tr[data-id="${pull.id}"]`);
    if (tr) return tr;
    const waiting = body.querySelector(".waiting");
    if (waiting) waiting.remove();
    tr = document.createElement("tr");
    tr.dataset.id = pull.id;
    tr.innerHTML = '<td><b class="name"></b><div class="url"></div></td>' +
      '<td><progress max="1" value="0"></progress> <span class="figures"></span></td>' +
      '<td><span class="state"></span> <span class="message"></span></td>' +
      '<td><button type="button" class="cancel">Cancel</button></td>';
    tr.querySelector(".name").textContent = pull.name;
    tr.querySelector(".url").textContent = pull.url + " · started by " + pull.started_by;
    tr.querySelector(".cancel").addEventListener("click", () => cancel(pull.id, tr));
    body.prepend(tr);
    return tr;
  }

  function update(pull) {
    const tr = row(pull);
    tr.dataset.state = pull.state;
    const bar = tr.querySelector("progress");
    if (pull.total) bar.value = pull.received / pull.total; else bar.removeAttribute("value");
    if (pull.state === "done") bar.value = 1;
    const figures = [size(pull.received) + (pull.total ? " / " + size(pull.total) : "")];
    if (!pull.finished) figures.push(size(pull.bytes_per_second) + "/s", "ETA " + duration(pull.eta_seconds));
    tr.querySelector(".figures").textContent = figures.join(" · ");
    tr.querySelector(".state").textContent = pull.state;
    tr.querySelector(".message").textContent = pull.message;
    tr.querySelector(".cancel").hidden = pull.finished;
  }

  function cancel(id, tr) {
    const button = tr.querySelector(".cancel");
    button.disabled = true;
    fetch(table.dataset.cancelUrl.replace("JOB", id), {method: "POST", headers: {"X-CSRFToken": csrf}})
      .then((response) => response.ok ? response.json() : {cancelled: false})
      .then((answer) => { if (!answer.cancelled) button.disabled = false; })
      .catch(() => { button.disabled = false; });
  }

  function connect() {
    const socket = new WebSocket(scheme + "//" + location.host + "/ws/dashboard/pulls/");
    socket.onopen = () => document.body.dataset.pulls = "open";
    socket.onmessage = (event) => JSON.parse(event.data).pulls.forEach(update);
    socket.onclose = () => { document.body.dataset.pulls = "closed"; setTimeout(connect, 3000); };
  }
  connect();
})();
