// voicequeue web page: talk (microphone), upload a file or type; the reply streams in as text and audio.
"use strict";

// Visible to tests and to the curious: what the page has done so far.
const vq = (window.vq = {
  sessionId: null, jobId: null, transcript: "", reply: "", status: "idle",
  chunksReceived: 0, chunksStarted: 0, chunksPlayed: 0, errors: [],
});

const $ = (id) => document.getElementById(id);
const SESSION_KEY = "voicequeue.session";
const API_KEY = "voicequeue.apikey";

// Every call carries the tenant's API key when one is set (the gateway may have auth on).
function api(url, options = {}) {
  const key = sessionStorage.getItem(API_KEY);
  const headers = new Headers(options.headers || {});
  if (key) headers.set("Authorization", `Bearer ${key}`);
  return fetch(url, { ...options, headers });
}

// Server-sent events over fetch: EventSource cannot send an Authorization header.
// Reconnects with Last-Event-ID, as EventSource would, when the connection drops mid-stream.
class EventReader {
  constructor(url) {
    this.url = url;
    this.handlers = new Map();
    this.lastId = null;
    this.closed = false;
    this.controller = null;
    this.onerror = null;
    this.run();
  }

  addEventListener(type, handler) { this.handlers.set(type, handler); }

  close() {
    this.closed = true;
    if (this.controller) this.controller.abort();
  }

  dispatch(block) {
    let type = "message", data = "";
    for (const line of block.split("\n")) {
      if (line.startsWith("id:")) this.lastId = line.slice(3).trim();
      else if (line.startsWith("event:")) type = line.slice(6).trim();
      else if (line.startsWith("data:")) data += line.slice(5).trim();
    }
    const handler = this.handlers.get(type);
    if (handler && data) handler({ data });
  }

  async run() {
    for (let attempt = 0; attempt < 5 && !this.closed; attempt++) {
      this.controller = new AbortController();
      const headers = this.lastId ? { "Last-Event-ID": this.lastId } : {};
      try {
        const response = await api(this.url, { headers, signal: this.controller.signal });
        if (!response.ok) throw new Error(await errorText(response));
        const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
        let buffer = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += value;
          let cut;
          while ((cut = buffer.indexOf("\n\n")) >= 0) {
            this.dispatch(buffer.slice(0, cut));
            buffer = buffer.slice(cut + 2);
            if (this.closed) return;
          }
        }
        return;  // the server ends the stream after the job's final event
      } catch (err) {
        if (this.closed) return;
        if (attempt === 4 && this.onerror) this.onerror(err);
        await new Promise((r) => setTimeout(r, 500 * (attempt + 1)));
      }
    }
  }
}

function newSessionId() {
  const bytes = new Uint8Array(12);
  crypto.getRandomValues(bytes);
  return "web-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function setSession(id) {
  vq.sessionId = id;
  localStorage.setItem(SESSION_KEY, id);
  $("session-id").textContent = id;
}

function setStatus(text, isError = false) {
  vq.status = text;
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
  if (isError) vq.errors.push(text);
}

async function errorText(response) {
  if (response.status === 401) return "this gateway needs an API key: paste yours into the key field above";
  try {
    const body = await response.json();
    return (body.error && body.error.message) || body.detail || response.statusText;
  } catch {
    return response.statusText;
  }
}

// ---- reply audio: each sentence's WAV is decoded and scheduled right after the previous one ----

let audioCtx = null;

function audio() {
  if (!audioCtx) audioCtx = new AudioContext();
  if (audioCtx.state === "suspended") audioCtx.resume();
  return audioCtx;
}

class ChunkPlayer {
  constructor(jobId) {
    this.jobId = jobId;
    this.buffers = new Map(); // seq → AudioBuffer | null (failed)
    this.nextSeq = 0;
    this.playAt = 0;
    this.received = 0;
  }

  async add(seq, url) {
    this.received += 1;
    vq.chunksReceived += 1;
    try {
      const response = await api(url);
      if (!response.ok) throw new Error(await errorText(response));
      this.buffers.set(seq, await audio().decodeAudioData(await response.arrayBuffer()));
    } catch (err) {
      this.buffers.set(seq, null);
      vq.errors.push(`chunk ${seq}: ${err.message}`);
    }
    this.schedule();
  }

  skip(seq) {
    this.buffers.set(seq, null);
    this.schedule();
  }

  schedule() {
    const ctx = audio();
    while (this.buffers.has(this.nextSeq)) {
      const buffer = this.buffers.get(this.nextSeq);
      this.buffers.delete(this.nextSeq);
      this.nextSeq += 1;
      if (!buffer) continue;
      const source = ctx.createBufferSource();
      source.buffer = buffer;
      source.connect(ctx.destination);
      source.onended = () => { vq.chunksPlayed += 1; };
      this.playAt = Math.max(this.playAt, ctx.currentTime + 0.02);
      source.start(this.playAt);
      vq.chunksStarted += 1;
      this.playAt += buffer.duration;
    }
  }
}

// ---- one turn: follow the job's events and show them ----

function addTurn(youText) {
  const node = $("turn-template").content.firstElementChild.cloneNode(true);
  node.querySelector(".transcript").textContent = youText;
  $("turns").prepend(node);
  return node;
}

function follow(links, turn, speak) {
  vq.jobId = links.id;
  vq.reply = "";
  turn.dataset.job = links.id;
  const player = new ChunkPlayer(links.id);
  const replyEl = turn.querySelector(".reply");
  const source = new EventReader(links.events_url);
  const on = (type, handler) => source.addEventListener(type, (e) => handler(JSON.parse(e.data)));

  on("asr.partial", (d) => { if (d.text) turn.querySelector(".transcript").textContent = d.text; });
  on("stage.started", (d) => setStatus(`${d.stage} working…`));
  on("stage.done", (d) => {
    if (d.stage === "asr") {
      vq.transcript = d.result.text;
      turn.querySelector(".transcript").textContent = d.result.text;
    } else if (d.stage === "llm") {
      vq.reply = d.result.text;
      replyEl.textContent = d.result.text;
    }
  });
  on("llm.delta", (d) => {
    vq.reply += d.text;
    replyEl.textContent = vq.reply;
  });
  on("tts.chunk", (d) => { if (speak) player.add(d.seq, d.url); });
  on("tts.chunk_failed", (d) => player.skip(d.seq));

  const finish = (text, isError) => {
    source.close();
    setStatus(text, isError);
    loadHistory();
  };
  on("job.done", (d) => {
    const job = d.job;
    const cost = job.cost || {};
    const parts = [];
    if (job.ttfa_s != null) parts.push(`first audio ${(job.ttfa_s).toFixed(2)} s`);
    if (cost.cache_hits) parts.push("answer from cache");
    if (cost.completion_tokens) parts.push(`${cost.completion_tokens} tokens`);
    turn.querySelector(".meta").textContent = parts.join(" · ");
    if (window.showKnowledge) window.showKnowledge(job);
    // A reply spoken in one piece (no sentence chunks): play the whole file.
    if (speak && player.received === 0 && job.results.tts) player.add(0, links.audio_url);
    finish("Done.", false);
  });
  on("job.failed", (d) => finish(`Failed: ${d.error.message}`, true));
  on("job.cancelled", () => finish("Cancelled.", true));
  source.onerror = (err) => setStatus(`Event stream lost: ${err.message}`, true);
}

async function submitTurn(blob, filename) {
  audio();
  const form = new FormData();
  form.append("file", blob, filename);
  form.append("session_id", vq.sessionId);
  const turn = addTurn("…");
  setStatus("Uploading…");
  const response = await api("/v1/turns", { method: "POST", body: form });
  if (!response.ok) {
    turn.querySelector(".transcript").textContent = `(${filename})`;
    setStatus(`Refused: ${await errorText(response)}`, true);
    return;
  }
  follow(await response.json(), turn, true);
}

async function sendText(text) {
  audio();
  const speak = $("speak").checked;
  const turn = addTurn(text);
  vq.transcript = text;
  setStatus("Sending…");
  const response = await api("/v1/chat", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ text, session_id: vq.sessionId, speak }),
  });
  if (!response.ok) {
    setStatus(`Refused: ${await errorText(response)}`, true);
    return;
  }
  follow(await response.json(), turn, speak);
}

// ---- microphone ----

let recorder = null;

async function toggleRecording() {
  const button = $("record");
  if (recorder && recorder.state === "recording") {
    recorder.stop();
    return;
  }
  audio();
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ audio: true });
  } catch (err) {
    setStatus(`No microphone: ${err.message}`, true);
    return;
  }
  const parts = [];
  recorder = new MediaRecorder(stream);
  recorder.ondataavailable = (e) => { if (e.data.size) parts.push(e.data); };
  recorder.onstop = () => {
    stream.getTracks().forEach((t) => t.stop());
    button.classList.remove("recording");
    button.textContent = "● Talk";
    const type = recorder.mimeType || "audio/webm";
    submitTurn(new Blob(parts, { type }), type.includes("ogg") ? "speech.ogg" : "speech.webm");
  };
  recorder.start();
  button.classList.add("recording");
  button.textContent = "■ Stop";
  setStatus("Recording… press Stop when done.");
}

// ---- session history ----

async function loadHistory() {
  const list = $("history");
  const response = await api(`/v1/sessions/${vq.sessionId}`);
  list.replaceChildren();
  if (!response.ok) return;
  for (const turn of (await response.json()).turns) {
    const item = document.createElement("li");
    const role = document.createElement("span");
    role.className = "role";
    role.textContent = turn.role === "user" ? "You:" : "Bot:";
    item.append(role, turn.content);
    list.append(item);
  }
}

async function forgetSession() {
  await api(`/v1/sessions/${vq.sessionId}`, { method: "DELETE" });
  setSession(newSessionId());
  $("turns").replaceChildren();
  loadHistory();
  setStatus("New conversation.");
}

// ---- wiring ----

setSession(localStorage.getItem(SESSION_KEY) || newSessionId());
$("api-key").value = sessionStorage.getItem(API_KEY) || "";
$("api-key").addEventListener("change", (e) => {
  const key = e.target.value.trim();
  if (key) sessionStorage.setItem(API_KEY, key); else sessionStorage.removeItem(API_KEY);
  loadHistory();
});
loadHistory();
$("record").addEventListener("click", toggleRecording);
$("forget").addEventListener("click", forgetSession);
$("file").addEventListener("change", (e) => {
  const file = e.target.files[0];
  if (file) submitTurn(file, file.name);
  e.target.value = "";
});
$("chat-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const text = $("text").value.trim();
  if (!text) return;
  $("text").value = "";
  sendText(text);
});
