// The live feed: each finished request arrives over a WebSocket and is added at the top.
(function () {
  const body = document.querySelector("#feed tbody");
  const keep = 50;
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";

  function cell(text) {
    const td = document.createElement("td");
    td.textContent = text === null || text === undefined ? "–" : String(text);
    return td;
  }

  function add(record) {
    const waiting = body.querySelector(".waiting");
    if (waiting) waiting.remove();
    const row = document.createElement("tr");
    row.className = "new status-" + record.status;
    const time = new Date(record.created_at).toLocaleTimeString();
    [time, record.instance, record.model || "–", record.endpoint + (record.source ? " · " + record.source : ""), record.status + " " + record.http_status,
     record.prompt_tokens + " / " + record.completion_tokens, record.ttft_ms, record.duration_ms,
     record.tokens_per_second].forEach((value) => row.appendChild(cell(value)));
    body.prepend(row);
    while (body.rows.length > keep) body.deleteRow(body.rows.length - 1);
  }

  function connect() {
    const socket = new WebSocket(scheme + "//" + location.host + "/ws/dashboard/feed/");
    socket.onopen = () => document.body.dataset.feed = "open";
    socket.onmessage = (event) => add(JSON.parse(event.data));
    socket.onclose = () => { document.body.dataset.feed = "closed"; setTimeout(connect, 3000); };
  }
  connect();
})();
