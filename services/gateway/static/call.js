// Call mode: a live voice call over /v1/realtime (the OpenAI Realtime protocol). The microphone runs with the
// browser's echo cancellation, so the bot's own voice does not interrupt it; when the caller talks over the
// bot, playback stops at once and the server is told how much of the reply was actually heard.
"use strict";

const vqCall = (window.vqCall = {
  state: "idle", callId: null, heard: [], said: "", audioDeltas: 0, played: 0, bargeIns: 0, responses: [],
  errors: [],
});

const CALL_RATE = 24000;
const call = { ws: null, ctx: null, stream: null, processor: null, sources: [], playHead: 0, item: null };

function toBase64(int16) {
  const bytes = new Uint8Array(int16.buffer);
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(binary);
}

function fromBase64(text) {
  const raw = atob(text);
  const bytes = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
  return new Int16Array(bytes.buffer);
}

function callStatus(text) {
  vqCall.state = text;
  document.getElementById("call-status").textContent = text;
}

function callLine(who, text) {
  const li = document.createElement("li");
  li.innerHTML = `<b>${who}:</b> <span></span>`;
  li.querySelector("span").textContent = text;
  document.getElementById("call-log").appendChild(li);
  return li.querySelector("span");
}

function play(event) {
  const pcm = fromBase64(event.delta);
  const buffer = call.ctx.createBuffer(1, pcm.length, CALL_RATE);
  const channel = buffer.getChannelData(0);
  for (let i = 0; i < pcm.length; i++) channel[i] = pcm[i] / 32768;
  const source = call.ctx.createBufferSource();
  source.buffer = buffer;
  source.connect(call.ctx.destination);
  const at = Math.max(call.ctx.currentTime, call.playHead);
  if (!call.item || call.item.id !== event.item_id) call.item = { id: event.item_id, startedAt: at, ms: 0 };
  call.item.ms += (pcm.length / CALL_RATE) * 1000;
  source.start(at);
  call.playHead = at + buffer.duration;
  source.onended = () => { vqCall.played++; call.sources = call.sources.filter((s) => s !== source); };
  call.sources.push(source);
  vqCall.audioDeltas++;
}

// The caller spoke over the bot: silence it now and say where it stopped (conversation.item.truncate).
function bargeIn() {
  if (!call.item || call.playHead <= call.ctx.currentTime) return;
  const heardMs = Math.max(0, Math.min(call.item.ms, (call.ctx.currentTime - call.item.startedAt) * 1000));
  for (const s of call.sources) { try { s.stop(); } catch (_) { /* already ended */ } }
  call.sources = [];
  call.playHead = call.ctx.currentTime;
  call.ws.send(JSON.stringify({ type: "conversation.item.truncate", item_id: call.item.id, content_index: 0,
                                audio_end_ms: Math.floor(heardMs) }));
  vqCall.bargeIns++;
}

let botLine = null;
function onCallEvent(event) {
  switch (event.type) {
    case "session.created":
      vqCall.callId = event.session.id;
      callStatus("In call: speak any time.");
      break;
    case "input_audio_buffer.speech_started":
      bargeIn();
      callStatus("Listening…");
      break;
    case "conversation.item.input_audio_transcription.completed":
      vqCall.heard.push(event.transcript);
      callLine("You", event.transcript);
      break;
    case "response.created":
      botLine = callLine("Bot", "");
      vqCall.said = "";
      break;
    case "response.output_audio_transcript.delta":
      vqCall.said += event.delta;
      if (botLine) botLine.textContent = vqCall.said;
      break;
    case "response.output_audio.delta":
      play(event);
      break;
    case "response.done":
      vqCall.responses.push(event.response.status);
      callStatus("In call: speak any time.");
      break;
    case "error":
      vqCall.errors.push(event.error.message);
      break;
  }
}

async function startCall() {
  callStatus("Connecting…");
  const key = sessionStorage.getItem("voicequeue.apikey");
  const protocols = ["realtime", ...(key ? [`openai-insecure-api-key.${key}`] : [])];
  call.stream = await navigator.mediaDevices.getUserMedia({
    audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true, channelCount: 1 },
  });
  call.ctx = new AudioContext({ sampleRate: CALL_RATE });
  const ws = (call.ws = new WebSocket(`${location.origin.replace(/^http/, "ws")}/v1/realtime?model=voicequeue`,
                                      protocols));
  ws.onmessage = (m) => onCallEvent(JSON.parse(m.data));
  ws.onclose = (e) => endCall(e.reason || "call ended");
  await new Promise((resolve, reject) => { ws.onopen = resolve; ws.onerror = () => reject(new Error("refused")); });
  const source = call.ctx.createMediaStreamSource(call.stream);
  // A ScriptProcessor is enough for 16-bit frames every ~85 ms; it must be connected to run (it outputs silence).
  call.processor = call.ctx.createScriptProcessor(2048, 1, 1);
  call.processor.onaudioprocess = (e) => {
    if (ws.readyState !== WebSocket.OPEN) return;
    const input = e.inputBuffer.getChannelData(0);
    const pcm = new Int16Array(input.length);
    for (let i = 0; i < input.length; i++) pcm[i] = Math.max(-1, Math.min(1, input[i])) * 32767;
    ws.send(JSON.stringify({ type: "input_audio_buffer.append", audio: toBase64(pcm) }));
  };
  source.connect(call.processor);
  call.processor.connect(call.ctx.destination);
  document.getElementById("call").textContent = "■ Hang up";
}

function endCall(reason) {
  if (call.ws && call.ws.readyState === WebSocket.OPEN) call.ws.close(1000);
  if (call.processor) call.processor.disconnect();
  if (call.stream) for (const t of call.stream.getTracks()) t.stop();
  call.ws = call.processor = call.stream = null;
  document.getElementById("call").textContent = "☎ Call";
  callStatus(`Call ended (${reason}).`);
}

document.getElementById("call").addEventListener("click", () => {
  if (call.ws) endCall("hung up");
  else startCall().catch((err) => { vqCall.errors.push(String(err)); endCall(String(err)); });
});
