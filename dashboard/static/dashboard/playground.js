// The playground: a chat with any model through the server's own /v1/chat/completions, as the
// signed-in staff user (the X-Llamasite-Console header and the page's CSRF token stand in for an
// API key). Conversations live in this browser's localStorage. A model that takes images (its
// input_modalities) gets them attached or pasted, sent as the chat API's image_url parts.
(function () {
  const STORE = "llamasite.playground.conversations";
  const $ = (id) => document.getElementById(id);
  const csrf = document.querySelector("meta[name=csrf-token]").content;
  let conversations = JSON.parse(localStorage.getItem(STORE) || "[]");
  let current = null;
  let running = null; // the AbortController of the answer being streamed
  let pending = []; // the images attached to the next message: {name, data_url}

  const IMAGE_TYPES = ["image/png", "image/jpeg", "image/gif", "image/webp", "image/bmp"];
  const limits = $("composer").dataset; // the server's: maxImageBytes, maxBodyBytes, maxImages

  const SETTINGS = "llamasite.playground.settings";
  const SETTING_FIELDS = ["temperature", "max-tokens", "top-p", "seed", "json-mode"];

  // Images soon fill the browser's storage (a few MiB an origin): then the conversations are
  // kept without them, and the page says so.
  function save() {
    let full = false;
    try {
      localStorage.setItem(STORE, JSON.stringify(conversations));
    } catch (error) {
      if (error.name !== "QuotaExceededError") throw error;
      full = true;
      localStorage.setItem(STORE, JSON.stringify(conversations, (key, value) => (key === "data_url" ? undefined : value)));
    }
    $("storage-note").hidden = !full;
  }

  function saveSettings() {
    const values = Object.fromEntries(SETTING_FIELDS.map((id) => [id, $(id).type === "checkbox" ? $(id).checked : $(id).value]));
    localStorage.setItem(SETTINGS, JSON.stringify(values));
  }

  function restoreSettings() {
    const values = JSON.parse(localStorage.getItem(SETTINGS) || "{}");
    for (const [id, value] of Object.entries(values)) {
      if (!$(id)) continue;
      if ($(id).type === "checkbox") $(id).checked = value; else $(id).value = value;
    }
  }

  // The models' states in the picker, kept current by the models page's WebSocket (pushed on
  // every change: loads, their progress, unloads).
  function showStates(table) {
    for (const row of table.models) {
      const option = [...$("model").options].find((candidate) => candidate.value === row.name);
      if (!option) continue;
      const state = row.state === "loading" && row.load_percent !== null ? "loading " + row.load_percent + "%" : row.state;
      option.dataset.state = row.state;
      option.dataset.inputs = row.input_modalities.join(" ");
      option.textContent = option.textContent.replace(/ · [^·]+/, " · " + state);
    }
    offerImages();
  }

  function watchStates() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const socket = new WebSocket(scheme + "//" + location.host + "/ws/dashboard/models/");
    socket.onmessage = (event) => showStates(JSON.parse(event.data));
    socket.onclose = () => setTimeout(watchStates, 3000);
  }

  function newConversation() {
    current = { id: Date.now().toString(36), title: "New conversation", model: $("model").value, system: "", messages: [] };
    conversations.unshift(current);
    save();
    show();
  }

  function choose(conversation) {
    current = conversation;
    if ([...$("model").options].some((option) => option.value === conversation.model)) $("model").value = conversation.model;
    show();
  }

  function show() {
    const list = $("conversation-list");
    list.replaceChildren(...conversations.map((conversation) => {
      const item = document.createElement("li");
      const link = document.createElement("a");
      link.href = "#";
      link.textContent = conversation.title;
      link.onclick = (event) => { event.preventDefault(); if (!running) choose(conversation); };
      if (conversation === current) link.setAttribute("aria-current", "true");
      item.appendChild(link);
      return item;
    }));
    $("system").value = current.system;
    $("messages").replaceChildren(...current.messages.map(bubble));
    offerImages();
  }

  function bubble(message) {
    const box = document.createElement("div");
    box.className = "message " + message.role + (message.error ? " error" : "");
    if (message.images && message.images.length) {
      const images = document.createElement("div");
      images.className = "images";
      images.append(...message.images.map((image) => (image.data_url ? picture(image) : notKept(image))));
      box.appendChild(images);
    }
    const text = document.createElement("div");
    text.className = "text";
    box.appendChild(text);
    fill(box, message, false);
    if (message.stats) box.appendChild(statsLine(message.stats));
    return box;
  }

  function picture(image) {
    const img = document.createElement("img");
    img.src = image.data_url;
    img.alt = img.title = image.name;
    return img;
  }

  function notKept(image) {
    const note = document.createElement("span");
    note.className = "image-gone";
    note.textContent = "(" + image.name + ": not kept in this browser)";
    return note;
  }

  // Brings a message's box up to date: its thinking folded above the text (open only while the
  // model is still thinking), the text, then the tool calls, set apart from the text.
  function fill(box, message, thinking) {
    const text = box.querySelector(".text");
    text.textContent = message.content || "";
    if (message.reasoning_content) {
      let details = box.querySelector(".thinking");
      if (!details) {
        details = document.createElement("details");
        details.className = "thinking";
        const thought = document.createElement("div");
        thought.className = "thought";
        details.append(document.createElement("summary"), thought);
        details.open = thinking;
        box.insertBefore(details, text);
      } else if (!thinking && details.classList.contains("streaming")) details.open = false;
      details.classList.toggle("streaming", thinking);
      details.querySelector("summary").textContent = thinking ? "Thinking…" : thoughtFor(message.stats || {});
      details.querySelector(".thought").textContent = message.reasoning_content;
    }
    if (message.tool_calls) {
      let calls = box.querySelector(".tool-calls");
      if (!calls) {
        calls = document.createElement("div");
        calls.className = "tool-calls";
        text.after(calls);
      }
      calls.replaceChildren(...message.tool_calls.filter(Boolean).map(toolCall));
    }
  }

  function thoughtFor(stats) {
    if (stats.reasoning_tokens !== null && stats.reasoning_tokens !== undefined) return "Thought for " + stats.reasoning_tokens + " tokens";
    if (stats.thinking_ms) return "Thought for " + (stats.thinking_ms / 1000).toFixed(1) + " s";
    return "Thought";
  }

  function toolCall(call) {
    const box = document.createElement("div");
    box.className = "tool-call";
    const kind = document.createElement("span");
    kind.className = "kind";
    kind.textContent = "Tool call";
    const name = document.createElement("code");
    name.className = "name";
    name.textContent = call.function.name;
    const args = document.createElement("pre");
    args.className = "arguments";
    args.textContent = pretty(call.function.arguments);
    box.append(kind, name, args);
    return box;
  }

  // Arguments as indented JSON once they parse (complete); as they came until then.
  function pretty(args) {
    try { return JSON.stringify(JSON.parse(args), null, 2); } catch { return args; }
  }

  function statsLine(stats) {
    const line = document.createElement("div");
    line.className = "stats";
    const shown = [
      stats.model,
      stats.ttft_ms !== null ? "TTFT " + stats.ttft_ms + " ms" : null,
      stats.tokens_per_s !== null ? stats.tokens_per_s + " tokens/s" : null,
      stats.prompt_tokens !== null ? stats.prompt_tokens + " prompt tokens (" + stats.cached_tokens + " cached)" : null,
      stats.completion_tokens !== null ? stats.completion_tokens + " completion tokens" + (stats.reasoning_tokens ? " (" + stats.reasoning_tokens + " thinking)" : "") : null,
      stats.finish_reason,
    ];
    line.textContent = shown.filter((part) => part !== null && part !== undefined).join(" · ");
    for (const [key, value] of Object.entries(stats)) line.dataset[key.replace(/_(\w)/g, (_, c) => c.toUpperCase())] = value;
    return line;
  }

  function numberOf(id) {
    const value = $(id).value;
    return value === "" ? undefined : Number(value);
  }

  // A message as the chat request takes it: a user turn's images as content parts after its text
  // (`image_url` with a data URL); an assistant turn's tool calls go back as `tool_calls` (with
  // content null when it said nothing else), its thinking as `reasoning_content`.
  function wireMessage({ role, content, images, reasoning_content, tool_calls }) {
    const message = { role, content };
    const kept = (images || []).filter((image) => image.data_url);
    if (kept.length) {
      message.content = [
        ...(content ? [{ type: "text", text: content }] : []),
        ...kept.map((image) => ({ type: "image_url", image_url: { url: image.data_url } })),
      ];
    }
    const calls = (tool_calls || []).filter(Boolean);
    if (calls.length) {
      message.tool_calls = calls;
      if (!content) message.content = null;
    }
    if (reasoning_content) message.reasoning_content = reasoning_content;
    return message;
  }

  // The turns the next request carries: a turn that failed goes no further, neither its error nor
  // the message it answered (a refused image would be refused again with every later turn).
  function answered() {
    return current.messages.filter((message, index, all) => !message.error && !(all[index + 1] || {}).error);
  }

  function requestBody() {
    const messages = answered().map(wireMessage);
    if (current.system.trim()) messages.unshift({ role: "system", content: current.system });
    const body = {
      model: current.model, messages, stream: true, stream_options: { include_usage: true },
      temperature: numberOf("temperature"), max_tokens: numberOf("max-tokens"), top_p: numberOf("top-p"), seed: numberOf("seed"),
    };
    if ($("json-mode").checked) body.response_format = { type: "json_object" };
    return body;
  }

  // Server-sent events from a fetch body: yields each `data:` payload.
  async function* events(response) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += decoder.decode(value, { stream: true });
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        for (const line of event.split("\n")) if (line.startsWith("data: ")) yield line.slice(6);
      }
    }
  }

  async function send(text, images) {
    current.model = $("model").value;
    current.system = $("system").value;
    if (current.title === "New conversation") current.title = (text || images.map((image) => image.name).join(", ")).slice(0, 40);
    current.messages.push(images.length ? { role: "user", content: text, images } : { role: "user", content: text });
    const answer = { role: "assistant", content: "" };
    const body = requestBody();
    current.messages.push(answer);
    save();
    show();
    const box = $("messages").lastElementChild;
    const stats = {
      model: current.model, ttft_ms: null, tokens_per_s: null, prompt_tokens: null, cached_tokens: 0, completion_tokens: null,
      reasoning_tokens: null, thinking_ms: null, finish_reason: null,
    };
    answer.stats = stats;
    running = new AbortController();
    setRunning(true);
    const started = performance.now();
    let firstToken = null;
    let thinkingSince = null;
    const thinking = () => thinkingSince !== null && stats.thinking_ms === null;
    const thoughtEnds = () => { if (thinking()) stats.thinking_ms = Math.round(performance.now() - thinkingSince); };
    try {
      const response = await fetch("/v1/chat/completions", {
        method: "POST", body: JSON.stringify(body), signal: running.signal, credentials: "same-origin",
        headers: { "Content-Type": "application/json", "X-Llamasite-Console": "playground", "X-CSRFToken": csrf },
      });
      if (!response.ok) throw new Error((await response.json()).error.message);
      for await (const data of events(response)) {
        if (data === "[DONE]") break;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(chunk.error.message);
        for (const choice of chunk.choices || []) {
          const delta = choice.delta || {};
          if (delta.reasoning_content || delta.content || delta.tool_calls) {
            if (firstToken === null) { firstToken = performance.now(); stats.ttft_ms = Math.round(firstToken - started); }
          }
          if (delta.reasoning_content) {
            if (thinkingSince === null) thinkingSince = performance.now();
            answer.reasoning_content = (answer.reasoning_content || "") + delta.reasoning_content;
          }
          if (delta.content || delta.tool_calls) thoughtEnds();
          if (delta.content) answer.content += delta.content;
          for (const part of delta.tool_calls || []) addToolCallPart(answer, part);
          if (choice.finish_reason) stats.finish_reason = choice.finish_reason;
          fill(box, answer, thinking());
        }
        if (chunk.usage) {
          stats.prompt_tokens = chunk.usage.prompt_tokens;
          stats.completion_tokens = chunk.usage.completion_tokens;
          stats.cached_tokens = (chunk.usage.prompt_tokens_details || {}).cached_tokens || 0;
          const reasoning = (chunk.usage.completion_tokens_details || {}).reasoning_tokens;
          if (reasoning !== undefined) stats.reasoning_tokens = reasoning;
        }
      }
      const seconds = firstToken === null ? 0 : (performance.now() - firstToken) / 1000;
      if (seconds > 0 && stats.completion_tokens > 1) stats.tokens_per_s = Math.round((stats.completion_tokens - 1) / seconds * 10) / 10;
    } catch (error) {
      if (error.name === "AbortError") stats.finish_reason = "stopped";
      else { answer.error = true; answer.content = answer.content || error.message; box.classList.add("error"); }
    } finally {
      thoughtEnds();
      fill(box, answer, false);
      box.appendChild(statsLine(stats));
      running = null;
      setRunning(false);
      save();
    }
  }

  // A streamed tool call comes in parts: the first with its id and name, the rest with pieces of
  // its arguments, each to be appended (as OpenAI's SDKs accumulate them).
  function addToolCallPart(answer, part) {
    answer.tool_calls = answer.tool_calls || [];
    const call = answer.tool_calls[part.index] = answer.tool_calls[part.index] || { id: "", type: "function", function: { name: "", arguments: "" } };
    if (part.id) call.id = part.id;
    const fn = part.function || {};
    if (fn.name) call.function.name += fn.name;
    if (fn.arguments) call.function.arguments += fn.arguments;
  }

  function setRunning(on) {
    $("send").disabled = on;
    $("stop").disabled = !on;
    document.body.dataset.generating = on ? "yes" : "no";
  }

  // Attaching is offered only where the chosen model takes images.
  function takesImages() {
    const option = $("model").selectedOptions[0];
    return Boolean(option) && (option.dataset.inputs || "").split(" ").includes("image");
  }

  function offerImages() {
    const on = takesImages();
    $("attach").disabled = $("attach-file").disabled = !on;
    if (on) $("attach").title = "Attach an image (PNG, JPEG, GIF, WebP or BMP), or paste one into the message";
    else $("attach").title = $("model").value ? $("model").value + " takes text only" : "No model to send images to";
  }

  // Files chosen or pasted become pending images, each checked against the server's limits first.
  async function attach(files) {
    const problems = [];
    for (const file of files) {
      const problem = attachProblem(file);
      if (problem) { problems.push(problem); continue; }
      pending.push({ name: file.name || "pasted image", data_url: await dataUrlOf(file) });
    }
    $("attach-error").textContent = problems.join(" ");
    $("attach-error").hidden = !problems.length;
    showPending();
  }

  function attachProblem(file) {
    const name = file.name || "The pasted image";
    if (!takesImages()) return $("model").value + " takes text only: " + name + " was not attached.";
    if (!IMAGE_TYPES.includes(file.type)) return name + " is not PNG, JPEG, GIF, WebP or BMP.";
    if (file.size > Number(limits.maxImageBytes)) {
      return name + " is " + size(file.size) + ", larger than the server takes (server.max_image_bytes: " + size(Number(limits.maxImageBytes)) + ").";
    }
    if (Math.ceil(file.size / 3) * 4 > Number(limits.maxBodyBytes)) {
      return name + " is " + size(file.size) + ": as base64 it is larger than a request may be (server.max_body_bytes: " + size(Number(limits.maxBodyBytes)) + ").";
    }
    const sent = answered().flatMap((message) => message.images || []).filter((image) => image.data_url);
    if (sent.length + pending.length >= Number(limits.maxImages)) {
      return name + " was not attached: a request holds at most " + limits.maxImages + " images, the conversation's before it included.";
    }
    return null;
  }

  function size(bytes) {
    if (bytes >= 1024 * 1024) return (bytes / 1024 / 1024).toFixed(1) + " MiB";
    return bytes >= 1024 ? (bytes / 1024).toFixed(1) + " KiB" : bytes + " bytes";
  }

  function dataUrlOf(file) {
    return new Promise((resolve, reject) => {
      const reader = new FileReader();
      reader.onload = () => resolve(reader.result);
      reader.onerror = () => reject(reader.error);
      reader.readAsDataURL(file);
    });
  }

  // The pending images as thumbnails, each with its remove button; with one, the text may be empty.
  function showPending() {
    $("attachments").replaceChildren(...pending.map((image) => {
      const item = document.createElement("figure");
      item.className = "attachment";
      const remove = document.createElement("button");
      remove.type = "button";
      remove.className = "remove";
      remove.textContent = "×";
      remove.title = "Remove " + image.name;
      remove.setAttribute("aria-label", remove.title);
      remove.onclick = () => { pending = pending.filter((other) => other !== image); showPending(); };
      item.append(picture(image), remove);
      return item;
    }));
    $("prompt").required = !pending.length;
  }

  function exportJson() {
    const blob = new Blob([JSON.stringify(conversations, null, 2)], { type: "application/json" });
    const link = document.createElement("a");
    link.href = URL.createObjectURL(blob);
    link.download = "llamasite-playground.json";
    link.click();
    URL.revokeObjectURL(link.href);
  }

  $("composer").onsubmit = (event) => {
    event.preventDefault();
    const text = $("prompt").value.trim();
    if ((!text && !pending.length) || running || !$("model").value) return;
    const images = pending;
    pending = [];
    showPending();
    $("attach-error").hidden = true;
    $("prompt").value = "";
    send(text, images);
  };
  $("prompt").onkeydown = (event) => {
    if (event.key === "Enter" && !event.shiftKey) { event.preventDefault(); $("composer").requestSubmit(); }
  };
  // An image pasted into the message is attached (text pasted with it still goes into the box).
  $("prompt").onpaste = (event) => {
    const images = [...event.clipboardData.files].filter((file) => file.type.startsWith("image/"));
    if (!images.length) return;
    if (!event.clipboardData.types.includes("text/plain")) event.preventDefault();
    attach(images);
  };
  $("attach").onclick = () => $("attach-file").click();
  $("attach-file").onchange = () => { attach([...$("attach-file").files]); $("attach-file").value = ""; };
  $("stop").onclick = () => running && running.abort();
  $("new-conversation").onclick = () => { if (!running) newConversation(); };
  $("export").onclick = exportJson;
  $("system").onchange = () => { current.system = $("system").value; save(); };
  $("model").onchange = () => { current.model = $("model").value; save(); offerImages(); };

  for (const id of SETTING_FIELDS) $(id).onchange = saveSettings;
  restoreSettings();
  watchStates();
  if (conversations.length) choose(conversations[0]); else newConversation();
  document.body.dataset.ready = "yes";
})();
