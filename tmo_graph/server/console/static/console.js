// The chat box: sends the message, streams the answer (server-sent events over fetch), shows a
// local draft greyed while it may still be replaced, then the final answer, then its badges.
"use strict";

function badge(text, cls) {
  const span = document.createElement("span");
  span.className = "badge " + cls;
  span.textContent = text;
  return span;
}

function routeOf(done) {
  if (done.route !== "cloud") return ["device", "device"];
  const sent = (done.views_sent || []).length + (done.audio_sent || []).length;
  return sent ? ["cloud + views", "cloud-views"] : ["cloud text", "cloudtext"];
}

function showDone(live, done) {
  const row = document.createElement("div");
  row.className = "badges";
  const [label, cls] = routeOf(done);
  row.appendChild(badge(label, "route " + cls));
  if ((done.views_sent || []).length) row.appendChild(badge("sent: " + done.views_sent.join(", "), "views"));
  if (done.escalated) row.appendChild(badge("escalated", "escalated"));
  if (done.fallback) row.appendChild(badge("fell back: " + done.fallback, "fallback"));
  for (const [kind, n] of Object.entries(done.redactions || {})) {
    row.appendChild(badge(kind + " x" + n + " replaced by placeholders", "redacted"));
  }
  const stats = document.createElement("span");
  stats.className = "stat";
  const conf = done.confidence === null ? "-" : done.confidence.toFixed(2);
  stats.textContent = "confidence " + conf + ", " + done.latency_s.toFixed(2) + " s, $" + done.cost_usd.toFixed(6);
  row.appendChild(stats);
  const link = document.createElement("a");
  link.href = "/console/threads/" + encodeURIComponent(done.thread_id);
  link.id = "open-thread";
  link.textContent = "see the turn in the thread";
  row.appendChild(link);
  live.appendChild(row);
}

async function send(form) {
  const live = form.querySelector("#live");
  const message = form.querySelector("#message");
  const button = form.querySelector("#send");
  live.textContent = "";
  const draft = document.createElement("span");
  draft.className = "draft";
  draft.id = "draft";
  const final = document.createElement("span");
  final.className = "final";
  final.id = "final";
  live.append(draft, final);
  button.disabled = true;
  const body = {
    message: message.value,
    model: form.querySelector("#model").value,
    private: form.querySelector("#private").checked,
  };
  if (form.dataset.thread) body.thread_id = form.dataset.thread;
  try {
    const response = await fetch("/console/chat", {
      method: "POST",
      headers: { "content-type": "application/json", "x-tmo-console": "1" },
      body: JSON.stringify(body),
      credentials: "same-origin",
    });
    if (!response.ok) {
      const error = await response.json().catch(() => ({}));
      throw new Error((error.error && error.error.message) || response.statusText);
    }
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        const name = (block.match(/^event: (.*)$/m) || [])[1];
        const data = JSON.parse((block.match(/^data: (.*)$/m) || [])[1] || "{}");
        if (name === "draft") {
          draft.textContent += data.text;
          draft.dataset.seen = "1";
        } else if (name === "token") {
          draft.textContent = "";  // the final answer replaces the draft, shown once
          final.textContent += data.text;
        } else if (name === "done") {
          draft.remove();
          live.classList.add("finished");
          showDone(live, data);
          form.dataset.thread = data.thread_id;
          message.value = "";
        } else if (name === "error") {
          throw new Error(data.message);
        }
      }
    }
  } catch (error) {
    const p = document.createElement("p");
    p.className = "error";
    p.textContent = String(error.message || error);
    live.appendChild(p);
  } finally {
    button.disabled = false;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  const form = document.getElementById("chat");
  if (form) {
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      send(form);
    });
  }
});
