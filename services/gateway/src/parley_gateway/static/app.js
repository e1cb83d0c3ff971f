// Parley browser client.
//
//   mic -> capture worklet (16 kHz PCM16, 100 ms frames) -> WebSocket binary frames
//   WebSocket reply PCM16 -> resampled here to the context rate -> playback worklet
//
// One AudioContext (and its playback node) lives for the whole page, created
// on the first click because browsers only start audio after a user gesture.
// Everything tied to one connection (socket, microphone, capture node,
// transcript bookkeeping) lives in a `session` object that teardown() drops.

const INPUT_RATE = 16000;
const FRAME_SAMPLES = 1600; // 100 ms at 16 kHz
const DEFAULT_OUTPUT_RATE = 24000; // until session.started says otherwise
const PREBUFFER_MS = 60; // playback jitter buffer
// If this much mic audio is stuck in the socket the link has stalled; drop
// frames rather than grow the buffer (and the latency) without bound.
const MAX_BUFFERED_BYTES = 256 * 1024;
const MAX_ERRORS = 5;
const METER_FLOOR_DB = -60;

const $ = (id) => document.getElementById(id);
const ui = {
  connect: $('connect'),
  status: $('status'),
  meter: $('meter'),
  meterFill: $('meter-fill'),
  errors: $('errors'),
  transcript: $('transcript'),
  composer: $('composer'),
  textInput: $('text-input'),
  send: $('send'),
  stop: $('stop'),
};

let audio = null; // {ctx, ready: Promise, playback: AudioWorkletNode | null}
let session = null;
// Flushes awaiting the worklet's 'flushed' reply, oldest first: the socket to
// report on and the responses whose played time is settled by that reply.
const pendingFlushes = [];

// ---- audio ------------------------------------------------------------------

/** Streaming linear-interpolation resampler; state carries across chunks. */
class StreamResampler {
  constructor(inRate, outRate) {
    this.step = inRate / outRate;
    this.position = 0; // next output position in the current chunk; -1 = `previous`
    this.previous = 0;
  }

  /** Int16Array in -> Float32Array out at the output rate. */
  process(pcm) {
    const n = pcm.length;
    if (this.step === 1) return Float32Array.from(pcm, (v) => v / 32768);
    if (n === 0) return new Float32Array(0);
    const out = new Float32Array(Math.max(0, Math.ceil((n - 1 - this.position) / this.step)) + 1);
    let t = this.position;
    let k = 0;
    while (t < n - 1) {
      const i = Math.floor(t);
      const a = i < 0 ? this.previous : pcm[i] / 32768;
      out[k++] = a + (pcm[i + 1] / 32768 - a) * (t - i);
      t += this.step;
    }
    this.position = t - n;
    this.previous = pcm[n - 1] / 32768;
    return out.subarray(0, k);
  }
}

/** Create the AudioContext inside the click handler (user-gesture rule). */
function ensureAudio() {
  if (audio) return audio;
  const ctx = new AudioContext({ latencyHint: 'interactive' });
  const state = { ctx, playback: null, ready: null };
  state.ready = Promise.all([
    ctx.audioWorklet.addModule('/static/capture-worklet.js'),
    ctx.audioWorklet.addModule('/static/playback-worklet.js'),
  ]).then(
    () => {
      state.playback = new AudioWorkletNode(ctx, 'playback-processor', {
        numberOfInputs: 0,
        outputChannelCount: [1],
        processorOptions: { prebufferMs: PREBUFFER_MS },
      });
      state.playback.port.onmessage = onPlaybackMessage;
      state.playback.connect(ctx.destination);
    },
    (err) => {
      // Let the next click start over instead of reusing a broken context.
      if (audio === state) audio = null;
      ctx.close();
      throw err;
    },
  );
  audio = state;
  return state;
}

function onPlaybackMessage({ data }) {
  if (data.type === 'ended') {
    if (session?.pendingPlayback.delete(data.id)) {
      reportPlayed(session.ws, data.id, data.played);
      return;
    }
    // It finished playing just before a flush that has not been answered yet.
    for (const flush of pendingFlushes) {
      if (flush.ids.delete(data.id)) {
        reportPlayed(flush.ws, data.id, data.played);
        return;
      }
    }
  } else if (data.type === 'flushed') {
    const flush = pendingFlushes.shift();
    for (const id of flush.ids) reportPlayed(flush.ws, id, id === data.id ? data.played : 0);
  }
}

/** Stop reply audio now; played time is reported when the worklet answers. */
function flushPlayback(s) {
  pendingFlushes.push({ ws: s.ws, ids: new Set(s.pendingPlayback) });
  s.pendingPlayback.clear();
  s.replyAudio = null; // drop the rest of the interrupted reply's frames
  audio.playback.port.postMessage({ type: 'flush' });
}

function reportPlayed(ws, responseId, samples) {
  send(ws, {
    type: 'response.audio.played',
    response_id: responseId,
    played_ms: Math.round((samples / audio.ctx.sampleRate) * 1000),
  });
}

function onReplyAudio(s, buffer) {
  const reply = s.replyAudio;
  if (!reply) return; // no reply playing, or it was interrupted
  // Frames are whole PCM16LE samples; Int16Array reads them natively on the
  // little-endian platforms browsers run on.
  const samples = reply.resampler.process(new Int16Array(buffer));
  if (samples.length === 0) return;
  audio.playback.port.postMessage({ type: 'push', id: reply.id, samples }, [samples.buffer]);
}

function onMicFrame(s, { pcm, level }) {
  showLevel(level);
  const ws = s.ws;
  if (!s.started || ws?.readyState !== WebSocket.OPEN) return;
  if (ws.bufferedAmount > MAX_BUFFERED_BYTES) return;
  ws.send(pcm);
}

function showLevel(rms) {
  const db = 20 * Math.log10(Math.max(rms, 1e-6));
  const value = Math.max(0, Math.min(1, 1 - db / METER_FLOOR_DB));
  ui.meterFill.style.transform = `scaleX(${value})`;
  ui.meter.setAttribute('aria-valuenow', String(Math.round(value * 100)));
}

// ---- connection ---------------------------------------------------------------

function newSession() {
  return {
    ws: null,
    stream: null,
    source: null,
    capture: null,
    started: false,
    outputRate: DEFAULT_OUTPUT_RATE,
    replyAudio: null, // {id, resampler} while a reply's binary frames are arriving
    pendingPlayback: new Set(), // replies with audio whose played_ms is not yet reported
    partial: null, // the user's in-progress transcript element
    assistant: new Map(), // response_id -> {el, text: Text}
  };
}

async function connect() {
  const s = (session = newSession());
  setStatus('connecting', 'Connecting…');
  try {
    const { ctx, ready } = ensureAudio();
    const resumed = ctx.resume(); // must start inside the click
    const stream = await navigator.mediaDevices.getUserMedia({
      audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true, channelCount: 1 },
    });
    if (session !== s) {
      // Cancelled while the permission prompt was open.
      stream.getTracks().forEach((track) => track.stop());
      return;
    }
    s.stream = stream;
    await Promise.all([resumed, ready]);
    if (session !== s) return;
    startCapture(s, ctx);
    openSocket(s);
  } catch (err) {
    if (session !== s) return;
    addError(err.name === 'NotAllowedError' ? 'microphone' : 'audio', err.message || String(err));
    teardown('error', 'Microphone or audio unavailable');
  }
}

function startCapture(s, ctx) {
  s.source = ctx.createMediaStreamSource(s.stream);
  s.capture = new AudioWorkletNode(ctx, 'capture-processor', {
    numberOfInputs: 1,
    numberOfOutputs: 0,
    channelCount: 1,
    channelCountMode: 'explicit',
    channelInterpretation: 'speakers',
    processorOptions: { targetRate: INPUT_RATE, frameSize: FRAME_SAMPLES },
  });
  s.capture.port.onmessage = (event) => onMicFrame(s, event.data);
  s.source.connect(s.capture);
}

function openSocket(s) {
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  const ws = (s.ws = new WebSocket(`${scheme}//${location.host}/v1/conversation`));
  ws.binaryType = 'arraybuffer';
  ws.onopen = () => {
    setStatus('connecting', 'Starting session…');
    send(ws, { type: 'session.start', input_sample_rate: INPUT_RATE });
  };
  ws.onmessage = (event) => {
    if (typeof event.data !== 'string') {
      onReplyAudio(s, event.data);
      return;
    }
    let message;
    try {
      message = JSON.parse(event.data);
    } catch {
      addError('client', 'Received a text frame that is not JSON');
      return;
    }
    onEvent(s, message);
  };
  // 'error' carries no detail and is always followed by 'close'.
  ws.onclose = (event) => {
    const detail = `code ${event.code}${event.reason ? `: ${event.reason}` : ''}`;
    if (event.code !== 1000) addError('connection', `Connection closed (${detail})`);
    teardown('closed', `Disconnected (${detail})`);
  };
}

/** User-initiated end of the session. */
function disconnect() {
  if (session?.started) send(session.ws, { type: 'session.end' });
  teardown('idle', 'Disconnected');
}

function teardown(state, text) {
  const s = session;
  if (!s) return;
  if (audio?.playback) flushPlayback(s);
  session = null;
  if (s.capture) {
    s.capture.port.onmessage = null;
    s.capture.port.postMessage('stop');
    s.capture.disconnect();
  }
  s.source?.disconnect();
  s.stream?.getTracks().forEach((track) => track.stop());
  if (s.ws) {
    s.ws.onopen = s.ws.onmessage = s.ws.onclose = null;
    if (s.ws.readyState === WebSocket.CONNECTING || s.ws.readyState === WebSocket.OPEN) s.ws.close(1000);
  }
  s.partial?.remove();
  ui.transcript.removeAttribute('aria-busy');
  // Nothing to play or capture until the next Connect (which resumes it).
  audio?.ctx.suspend();
  showLevel(0);
  ui.meter.classList.remove('speaking');
  setStatus(state, text);
}

function send(ws, message) {
  if (ws?.readyState === WebSocket.OPEN) ws.send(JSON.stringify(message));
}

// ---- server events --------------------------------------------------------------

function onEvent(s, message) {
  switch (message.type) {
    case 'session.started':
      s.started = true;
      s.outputRate = message.output_sample_rate || DEFAULT_OUTPUT_RATE;
      setStatus('connected', 'Connected — listening');
      break;
    case 'vad.speech_started':
      ui.meter.classList.add('speaking');
      // Barge-in: the user talks over the reply, so silence it now.
      if (s.pendingPlayback.size > 0) flushPlayback(s);
      break;
    case 'vad.speech_stopped':
      ui.meter.classList.remove('speaking');
      break;
    case 'transcript.partial':
      if (!s.partial) {
        s.partial = addMessage('user', '');
        s.partial.classList.add('partial');
      }
      updateTranscript(() => (s.partial.textContent = message.text));
      break;
    case 'transcript.final':
      finishUserTurn(s, message.text);
      break;
    case 'response.created':
      assistantMessage(s, message.response_id);
      ui.transcript.setAttribute('aria-busy', 'true');
      break;
    case 'response.text.delta': {
      const { text } = assistantMessage(s, message.response_id);
      updateTranscript(() => text.appendData(message.text));
      break;
    }
    case 'response.audio.started': {
      const rate = message.sample_rate || s.outputRate;
      s.replyAudio = { id: message.response_id, resampler: new StreamResampler(rate, audio.ctx.sampleRate) };
      s.pendingPlayback.add(message.response_id);
      break;
    }
    case 'response.audio.done':
      if (s.replyAudio?.id === message.response_id) {
        s.replyAudio = null;
        audio.playback.port.postMessage({ type: 'end', id: message.response_id });
      }
      break;
    case 'response.done':
      finishResponse(s, message.response_id, message.timings);
      break;
    case 'response.cancelled':
      flushPlayback(s);
      s.assistant.get(message.response_id)?.el.classList.add('interrupted');
      finishResponse(s, message.response_id);
      break;
    case 'error':
      addError(message.code, message.message);
      break;
    default:
      break; // ping, session.ended and anything newer: nothing to do
  }
}

function finishUserTurn(s, text) {
  const el = s.partial;
  s.partial = null;
  if (!text) {
    el?.remove();
    return;
  }
  if (el) {
    el.classList.remove('partial');
    updateTranscript(() => (el.textContent = text));
  } else {
    addMessage('user', text);
  }
}

function assistantMessage(s, responseId) {
  let entry = s.assistant.get(responseId);
  if (!entry) {
    const el = addMessage('assistant', '');
    const text = document.createTextNode('');
    el.append(text);
    entry = { el, text };
    s.assistant.set(responseId, entry);
  }
  return entry;
}

function finishResponse(s, responseId, timings) {
  const entry = s.assistant.get(responseId);
  if (!entry) return;
  s.assistant.delete(responseId);
  if (s.assistant.size === 0) ui.transcript.removeAttribute('aria-busy');
  const line = formatTimings(timings);
  if (!line) return;
  const el = document.createElement('p');
  el.className = 'timings';
  el.dataset.testid = 'timings';
  el.textContent = line;
  updateTranscript(() => entry.el.after(el));
}

/** {asr_ms: 312, llm_first_token_ms: 420} -> "asr 312 ms · llm first token 420 ms" */
function formatTimings(timings) {
  return Object.entries(timings ?? {})
    .filter(([, ms]) => Number.isFinite(ms))
    .map(([name, ms]) => `${name.replace(/_ms$/, '').replaceAll('_', ' ')} ${Math.round(ms)} ms`)
    .join(' · ');
}

// ---- UI ---------------------------------------------------------------------

function addMessage(role, text) {
  const el = document.createElement('p');
  el.className = `message ${role}`;
  el.dataset.testid = `${role}-message`;
  el.textContent = text;
  updateTranscript(() => ui.transcript.append(el));
  return el;
}

/** Apply a transcript change, following the bottom if the reader was there. */
function updateTranscript(change) {
  const t = ui.transcript;
  const atBottom = t.scrollHeight - t.scrollTop - t.clientHeight < 24;
  change();
  if (atBottom) t.scrollTop = t.scrollHeight;
}

function addError(code, message) {
  const li = document.createElement('li');
  const text = document.createElement('span');
  text.textContent = code ? `${code}: ${message}` : message;
  const dismiss = document.createElement('button');
  dismiss.type = 'button';
  dismiss.className = 'dismiss';
  dismiss.textContent = '×';
  dismiss.setAttribute('aria-label', 'Dismiss error');
  dismiss.addEventListener('click', () => li.remove());
  li.append(text, dismiss);
  ui.errors.append(li);
  while (ui.errors.children.length > MAX_ERRORS) ui.errors.firstElementChild.remove();
}

function setStatus(state, text) {
  ui.status.dataset.state = state;
  ui.status.textContent = text;
  const active = state === 'connecting' || state === 'connected';
  ui.connect.textContent = active ? 'Disconnect' : 'Connect';
  ui.connect.classList.toggle('active', active);
  const live = state === 'connected';
  ui.textInput.disabled = !live;
  ui.send.disabled = !live;
  ui.stop.disabled = !live;
}

ui.connect.addEventListener('click', () => (session ? disconnect() : connect()));

ui.composer.addEventListener('submit', (event) => {
  event.preventDefault();
  const text = ui.textInput.value.trim();
  if (!text || !session?.started) return;
  send(session.ws, { type: 'text.input', text });
  // The server does not echo typed turns as transcripts; show it here.
  addMessage('user', text);
  ui.textInput.value = '';
});

ui.stop.addEventListener('click', () => {
  if (!session?.started) return;
  send(session.ws, { type: 'response.cancel' });
  flushPlayback(session); // don't wait for response.cancelled to go quiet
});

// Leaving the page: end the session cleanly rather than by a dropped socket.
window.addEventListener('pagehide', () => {
  if (session) disconnect();
});
