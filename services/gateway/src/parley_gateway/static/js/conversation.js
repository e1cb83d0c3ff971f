// The conversation page: talk to the assistant.
//
//   mic -> capture worklet (16 kHz PCM16, 100 ms frames) -> WebSocket binary frames
//   WebSocket reply PCM16 -> resampled here to the context rate -> playback worklet
//
// One AudioContext (and its playback node) lives for the whole page, created
// on the first click because browsers only start audio after a user gesture.
// Everything tied to one connection (socket, microphone, capture node,
// transcript bookkeeping) lives in a `session` object that teardown() drops.
//
// Turn taking ("mode", fixed per connection): "vad" streams the microphone all
// the time and the server ends turns on silence; "push_to_talk" sends audio
// only while the talk button (or Space) is held, and input.commit on release.
//
// A conversation outlives its connection: the page keeps the session id and
// resume token the server gave (`conversation`, also in sessionStorage, so a
// reload of the tab goes on with it too) and resumes that session whenever it
// connects again; only Disconnect ends it.

import { authHeaders, fillVoiceSelect, listVoices, request, withToken } from './api.js';

const INPUT_RATE = 16000;
const FRAME_SAMPLES = 1600; // 100 ms at 16 kHz
const DEFAULT_OUTPUT_RATE = 24000; // until session.started says otherwise
const PREBUFFER_MS = 60; // playback jitter buffer
// If this much mic audio is stuck in the socket the link has stalled; drop
// frames rather than grow the buffer (and the latency) without bound, and say
// so. Sending starts again once the socket has drained below the second mark.
const MAX_BUFFERED_BYTES = 256 * 1024;
const RESUME_BUFFERED_BYTES = 64 * 1024;
const FRAME_MS = 100;
const MAX_ERRORS = 5;
const METER_FLOOR_DB = -60;
const RECENT_RESPONSES = 20; // assistant messages kept addressable for late events
const MODE_KEY = 'parley.turn_detection';
const CONVERSATION_KEY = 'parley.conversation'; // sessionStorage: {id, token} of this tab's conversation
// After a connection drops unexpectedly (Wi-Fi, a proxy, a gateway restart): wait, then reconnect.
const RECONNECT_DELAYS_MS = [1000, 2000, 4000, 8000, 15000];

/** @param {string} id */
const $ = (id) => document.getElementById(id);
// The page's own elements (index.html): each is there, so none is null.
const ui = {
  connect: /** @type {HTMLButtonElement} */ ($('connect')),
  status: /** @type {HTMLElement} */ ($('status')),
  meter: /** @type {HTMLElement} */ ($('meter')),
  meterFill: /** @type {HTMLElement} */ ($('meter-fill')),
  errors: /** @type {HTMLUListElement} */ ($('errors')),
  transcript: /** @type {HTMLElement} */ ($('transcript')),
  composer: /** @type {HTMLFormElement} */ ($('composer')),
  textInput: /** @type {HTMLInputElement} */ ($('text-input')),
  send: /** @type {HTMLButtonElement} */ ($('send')),
  stop: /** @type {HTMLButtonElement} */ ($('stop')),
  mode: /** @type {HTMLSelectElement} */ ($('mode')),
  ptt: /** @type {HTMLButtonElement} */ ($('ptt')),
  pttLabel: /** @type {HTMLElement} */ ($('ptt-label')),
  voice: /** @type {HTMLSelectElement} */ ($('voice-select')),
  systemPrompt: /** @type {HTMLTextAreaElement} */ ($('system-prompt')),
  page: /** @type {HTMLElement} */ (document.querySelector('[data-page="talk"]')),
};

/**
 * The page's one AudioContext; `playback` is there once the worklets have loaded (`ready`,
 * which ensureAudio() sets before it returns).
 * @typedef {{ctx: AudioContext, ready: Promise<void> | null, playback: AudioWorkletNode | null}} AudioState
 */
/**
 * A conversation on the server: what resumes it.
 * @typedef {{id: string, token: string}} Conversation
 */
/**
 * An assistant message on screen: its element, the text node its reply's words go into.
 * @typedef {{el: HTMLParagraphElement, text: Text, done: boolean}} AssistantEntry
 */
/**
 * A flush the playback worklet has yet to answer.
 * @typedef {{ws: WebSocket | null, ids: Set<string>}} PendingFlush
 */
/**
 * A server event (docs/protocol.md), as parsed from its JSON text frame.
 * @typedef {{type: string, [field: string]: any}} ServerEvent
 */

/** @type {AudioState | null} */
let audio = null;
/** @type {Session | null} */
let session = null;
// The server's session this page talks in, {id, token}: resumed on every
// (re)connect until Disconnect ends it or the server no longer knows it.
let conversation = loadConversation();
/** @type {{attempt: number, timer: number | null}} */
const reconnect = { attempt: 0, timer: null };
// Flushes awaiting the worklet's 'flushed' reply, oldest first: the socket to
// report on and the responses whose played time is settled by that reply.
/** @type {PendingFlush[]} */
const pendingFlushes = [];
// response_id -> milliseconds of its audio received, at the sender's rate.
/** @type {Map<string, number>} */
const receivedMs = new Map();

// ---- audio ------------------------------------------------------------------

// Audio runs only after the first Connect, and reply audio only in a session, which starts
// once the worklets have loaded: from there on `audio` and its playback node are there.
const liveAudio = () => /** @type {AudioState} */ (audio);
const playbackPort = () => /** @type {AudioWorkletNode} */ (liveAudio().playback).port;

/** Streaming linear-interpolation resampler; state carries across chunks. */
class StreamResampler {
  /**
   * @param {number} inRate
   * @param {number} outRate
   */
  constructor(inRate, outRate) {
    this.step = inRate / outRate;
    this.position = 0; // next output position in the current chunk; -1 = `previous`
    this.previous = 0;
  }

  /**
   * Int16Array in -> Float32Array out at the output rate.
   * @param {Int16Array} pcm
   * @returns {Float32Array}
   */
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

/**
 * Create the AudioContext inside the click handler (user-gesture rule).
 * @returns {AudioState}
 */
function ensureAudio() {
  if (audio) return audio;
  const ctx = new AudioContext({ latencyHint: 'interactive' });
  // On the page, for whoever needs to know whether reply audio can be heard now (tests do).
  ctx.addEventListener('statechange', () => {
    document.body.dataset.audio = ctx.state;
  });
  /** @type {AudioState} */
  const state = { ctx, playback: null, ready: null };
  state.ready = Promise.all([
    ctx.audioWorklet.addModule('static/capture-worklet.js'),
    ctx.audioWorklet.addModule('static/playback-worklet.js'),
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

/**
 * What the playback worklet says (playback-worklet.js).
 * @param {MessageEvent<{type: 'started', id: string} | {type: 'ended', id: string, played: number}
 *   | {type: 'flushed', id: string | null, played: number}>} event
 */
function onPlaybackMessage({ data }) {
  if (data.type === 'started') {
    const starting = session?.assistant.get(data.id);
    if (starting) starting.el.dataset.playing = 'true';
    // The server times its echo guard from here: what the microphone hears now may be this reply.
    if (session?.pendingPlayback.has(data.id)) send(session.ws, { type: 'response.audio.playing', response_id: data.id });
  } else if (data.type === 'ended') {
    // The page's own record that this reply was heard to its end (tests read it too).
    const reply = session?.assistant.get(data.id);
    if (reply) reply.el.dataset.played = 'true';
    if (session?.pendingPlayback.delete(data.id)) {
      reportPlayed(session.ws, data.id, data.played, true);
      return;
    }
    // It finished playing just before a flush that has not been answered yet.
    for (const flush of pendingFlushes) {
      if (flush.ids.delete(data.id)) {
        reportPlayed(flush.ws, data.id, data.played, true);
        return;
      }
    }
  } else if (data.type === 'flushed') {
    const flush = /** @type {PendingFlush} */ (pendingFlushes.shift()); // each flush sent is answered once
    for (const id of flush.ids) reportPlayed(flush.ws, id, id === data.id ? data.played : 0);
  }
}

/**
 * Stop reply audio now; played time is reported when the worklet answers.
 * @param {Session} s
 */
function flushPlayback(s) {
  for (const id of s.pendingPlayback) s.assistant.get(id)?.el.classList.add('interrupted');
  pendingFlushes.push({ ws: s.ws, ids: new Set(s.pendingPlayback) });
  s.pendingPlayback.clear();
  s.replyAudio = null; // drop the rest of the interrupted reply's frames
  playbackPort().postMessage({ type: 'flush' });
}

/**
 * `complete`: the reply played to its end. Then say so in the sender's own
 * measure (resampling loses a fraction of a sample, and the server takes
 * anything under its audio_ms for a reply cut short).
 * @param {WebSocket | null} ws
 * @param {string} responseId
 * @param {number} samples played, at the context rate
 * @param {boolean} [complete]
 */
function reportPlayed(ws, responseId, samples, complete = false) {
  const played = (samples / liveAudio().ctx.sampleRate) * 1000;
  const received = receivedMs.get(responseId) ?? 0;
  receivedMs.delete(responseId);
  send(ws, {
    type: 'response.audio.played',
    response_id: responseId,
    played_ms: complete ? Math.ceil(Math.max(played, received)) : Math.round(played),
  });
}

/**
 * @param {Session} s
 * @param {ArrayBuffer} buffer
 */
function onReplyAudio(s, buffer) {
  const reply = s.replyAudio;
  if (!reply) return; // no reply playing, or it was interrupted
  // Frames are whole PCM16LE samples; Int16Array reads them natively on the
  // little-endian platforms browsers run on.
  const pcm = new Int16Array(buffer);
  receivedMs.set(reply.id, (receivedMs.get(reply.id) ?? 0) + (pcm.length / reply.rate) * 1000);
  const samples = reply.resampler.process(pcm);
  if (samples.length === 0) return;
  playbackPort().postMessage({ type: 'push', id: reply.id, samples }, [samples.buffer]);
}

/**
 * What the capture worklet posts (capture-worklet.js).
 * @param {Session} s
 * @param {{pcm: Int16Array<ArrayBuffer>, level: number, flushed?: boolean}} frame
 */
function onMicFrame(s, { pcm, level, flushed }) {
  const ws = s.ws;
  const open = s.started && ws?.readyState === WebSocket.OPEN;
  if (flushed) {
    // The capture worklet's answer to a push-to-talk release: the end of the
    // turn's audio, then the commit. Frames of a new hold come after it.
    if (s.commitsPending === 0) return;
    s.commitsPending--;
    if (open && pcm.length > 0) ws.send(pcm);
    send(ws, { type: 'input.commit' });
    return;
  }
  showLevel(level);
  if (!open || (s.pushToTalk && !s.holding)) return;
  if (stalled(s, ws.bufferedAmount)) {
    s.droppedMs += FRAME_MS;
    return;
  }
  ws.send(pcm);
}

/**
 * Whether the socket is too backed up to take more microphone audio. The user
 * hears of it at once (what they say now is lost), and of how much was lost
 * once audio gets through again.
 * @param {Session} s
 * @param {number} buffered bytes
 */
function stalled(s, buffered) {
  if (!s.stalled && buffered > MAX_BUFFERED_BYTES) {
    s.stalled = true;
    s.droppedMs = 0;
    ui.page.dataset.mic = 'dropping';
    addError(
      'slow_connection',
      'The connection is too slow: your microphone is not getting through, and what you say now is lost',
      { outage: true },
    );
  } else if (s.stalled && buffered < RESUME_BUFFERED_BYTES) {
    s.stalled = false;
    delete ui.page.dataset.mic;
    removeErrors('slow_connection');
    addNote(`The connection was too slow: ${(s.droppedMs / 1000).toFixed(1)} s of microphone audio was lost`);
  }
  return s.stalled;
}

/** @param {number} rms */
function showLevel(rms) {
  const db = 20 * Math.log10(Math.max(rms, 1e-6));
  const value = Math.max(0, Math.min(1, 1 - db / METER_FLOOR_DB));
  ui.meterFill.style.transform = `scaleX(${value})`;
  ui.meter.setAttribute('aria-valuenow', String(Math.round(value * 100)));
}

// ---- connection ---------------------------------------------------------------

/**
 * Everything tied to one connection.
 * @typedef {object} Session
 * @property {string} turnDetection `vad` or `push_to_talk`
 * @property {boolean} pushToTalk
 * @property {boolean} holding
 * @property {number} commitsPending
 * @property {WebSocket | null} ws
 * @property {MediaStream | null} stream
 * @property {MediaStreamAudioSourceNode | null} source
 * @property {AudioWorkletNode | null} capture
 * @property {boolean} started
 * @property {Conversation | null} resuming
 * @property {boolean} renewed
 * @property {boolean} stalled
 * @property {number} droppedMs
 * @property {number} outputRate
 * @property {{id: string, rate: number, resampler: StreamResampler} | null} replyAudio
 * @property {Set<string>} pendingPlayback
 * @property {HTMLParagraphElement | null} partial
 * @property {Map<string, AssistantEntry>} assistant
 */

/**
 * @param {string} turnDetection
 * @returns {Session}
 */
function newSession(turnDetection) {
  return {
    turnDetection,
    pushToTalk: turnDetection === 'push_to_talk',
    holding: false, // push-to-talk: the talk button is down
    commitsPending: 0, // releases waiting for the capture worklet's last partial frame
    ws: null,
    stream: null,
    source: null,
    capture: null,
    started: false,
    resuming: null, // the conversation {id, token} this connection's session.start resumes
    renewed: false, // the server no longer knew that one: this connection starts a new one
    stalled: false, // the socket is backed up: microphone frames are being dropped
    droppedMs: 0, // microphone audio dropped since it stalled
    outputRate: DEFAULT_OUTPUT_RATE,
    replyAudio: null, // {id, resampler} while a reply's binary frames are arriving
    pendingPlayback: new Set(), // replies with audio whose played_ms is not yet reported
    partial: null, // the user's in-progress transcript element
    // response_id -> {el, text: Text, done}; finished ones are kept (the most
    // recent few) because response.cancelled / response.truncated can follow
    // response.done.
    assistant: new Map(),
  };
}

/** Whether the gateway says every service is up; if not, say what it waits for. */
async function serverReady() {
  try {
    let response = await fetch('readyz', { headers: authHeaders() });
    if (response.status === 401) {
      await request('v1/voices'); // asks for the API key, once
      response = await fetch('readyz', { headers: authHeaders() });
    }
    if (response.ok) return true;
    const body = await response.json();
    const crashing = Object.keys(body.crashing ?? {});
    addError(
      'not_ready',
      `The server is not ready: waiting for ${(body.missing ?? []).join(', ') || 'services'}` +
        (crashing.length ? ` (crashing: ${crashing.join(', ')})` : ''),
      { outage: true },
    );
  } catch {
    addError('not_ready', 'The server cannot be reached', { outage: true });
  }
  return false;
}

function scheduleReconnect() {
  if (reconnect.attempt >= RECONNECT_DELAYS_MS.length) {
    addError('connection', 'Gave up reconnecting; press Connect to try again', { outage: true, key: 'gave_up' });
    return;
  }
  const delay = RECONNECT_DELAYS_MS[reconnect.attempt++];
  setStatus('connecting', `Connection lost — reconnecting in ${delay / 1000} s…`);
  reconnect.timer = setTimeout(() => {
    reconnect.timer = null;
    connect();
  }, delay);
}

async function connect() {
  clearTimeout(reconnect.timer ?? undefined);
  reconnect.timer = null;
  const s = (session = newSession(ui.mode.value));
  setStatus('connecting', 'Connecting…');
  try {
    const { ctx, ready } = ensureAudio();
    const resumed = ctx.resume(); // must start inside the click
    if (!(await serverReady())) {
      if (session !== s) return;
      teardown('error', 'Server not ready');
      if (reconnect.attempt > 0) scheduleReconnect();
      return;
    }
    const stream = await navigator.mediaDevices.getUserMedia({
      audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true, channelCount: 1 },
    });
    if (session !== s) {
      // Cancelled while the permission prompt was open.
      stream.getTracks().forEach((track) => track.stop());
      return;
    }
    s.stream = stream;
    const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
    const [url] = await Promise.all([withToken(`${scheme}//${location.host}/v1/conversation`), resumed, ready]);
    if (session !== s) return;
    startCapture(s, ctx);
    openSocket(s, url);
  } catch (err) {
    if (session !== s) return;
    const error = /** @type {Error} */ (err); // a DOMException, mostly
    addError(error.name === 'NotAllowedError' ? 'microphone' : 'audio', error.message || String(error));
    teardown('error', 'Microphone or audio unavailable');
  }
}

/**
 * @param {Session} s its `stream` set
 * @param {AudioContext} ctx
 */
function startCapture(s, ctx) {
  s.source = ctx.createMediaStreamSource(/** @type {MediaStream} */ (s.stream));
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

/**
 * @param {Session} s
 * @param {string} url
 */
function openSocket(s, url) {
  const ws = (s.ws = new WebSocket(url));
  ws.binaryType = 'arraybuffer';
  ws.onopen = () => {
    setStatus('connecting', conversation ? 'Resuming the conversation…' : 'Starting session…');
    startSession(s);
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
    const unexpected = event.code !== 1000;
    if (unexpected) addError('connection', `Connection closed (${detail})`, { outage: true });
    teardown('closed', `Disconnected (${detail})`);
    if (unexpected && (s.started || reconnect.attempt > 0)) scheduleReconnect();
  };
}

/**
 * session.start: resume this page's conversation if it has one, else a new one.
 * @param {Session} s
 */
function startSession(s) {
  /** @type {Record<string, string | number>} */
  const start = { type: 'session.start', input_sample_rate: INPUT_RATE, turn_detection: s.turnDetection };
  if (ui.voice.value) start.voice = ui.voice.value;
  if (ui.systemPrompt.value.trim()) start.system_prompt = ui.systemPrompt.value.trim();
  s.resuming = conversation;
  if (conversation) {
    start.session_id = conversation.id;
    start.resume_token = conversation.token;
  }
  send(s.ws, start);
}

/** User-initiated end of the session: the conversation is over (the server forgets it). */
function disconnect() {
  clearTimeout(reconnect.timer ?? undefined);
  reconnect.timer = null;
  reconnect.attempt = 0;
  if (session?.started) send(session.ws, { type: 'session.end' });
  keepConversation(null);
  teardown('idle', 'Disconnected');
}

/** Leaving or reloading the page: close the socket but keep the session, which a reload resumes. */
function leave() {
  clearTimeout(reconnect.timer ?? undefined);
  reconnect.timer = null;
  teardown('idle', 'Disconnected');
}

/** @returns {Conversation | null} */
function loadConversation() {
  try {
    const saved = JSON.parse(sessionStorage.getItem(CONVERSATION_KEY) ?? 'null');
    if (typeof saved?.id === 'string' && typeof saved?.token === 'string') return { id: saved.id, token: saved.token };
  } catch {
    // storage unavailable or garbled: start afresh
  }
  return null;
}

/** @param {Conversation | null} value */
function keepConversation(value) {
  conversation = value;
  try {
    if (value) sessionStorage.setItem(CONVERSATION_KEY, JSON.stringify(value));
    else sessionStorage.removeItem(CONVERSATION_KEY);
  } catch {
    // kept for this page's life only
  }
}

/**
 * @param {string} state the status's `data-state`
 * @param {string} text
 */
function teardown(state, text) {
  const s = session;
  if (!s) return;
  if (audio?.playback) flushPlayback(s);
  session = null;
  s.holding = false;
  s.commitsPending = 0;
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
  if (s.stalled) {
    delete ui.page.dataset.mic;
    removeErrors('slow_connection');
  }
  ui.transcript.removeAttribute('aria-busy');
  // Nothing to play or capture until the next Connect (which resumes it).
  audio?.ctx.suspend();
  showLevel(0);
  ui.meter.classList.remove('speaking');
  showHolding(false);
  setStatus(state, text);
}

/**
 * @param {WebSocket | null} ws
 * @param {object} message
 */
function send(ws, message) {
  if (ws?.readyState === WebSocket.OPEN) ws.send(JSON.stringify(message));
}

// ---- server events --------------------------------------------------------------

/**
 * @param {Session} s
 * @param {ServerEvent} message
 */
function onEvent(s, message) {
  switch (message.type) {
    case 'session.started':
      s.started = true;
      reconnect.attempt = 0;
      s.outputRate = message.output_sample_rate || DEFAULT_OUTPUT_RATE;
      onSessionStarted(s, message);
      setStatus('connected', s.pushToTalk ? 'Connected — hold to talk' : 'Connected — listening');
      break;
    case 'vad.speech_started':
      // Not a barge-in by itself: it may be the reply's own echo. The server
      // decides, and says so with response.cancelled, which flushes playback.
      ui.meter.classList.add('speaking');
      break;
    case 'vad.speech_stopped':
      ui.meter.classList.remove('speaking');
      break;
    case 'transcript.partial':
      showPartial(s, message.text ?? '', message.stable ?? '');
      break;
    case 'transcript.final':
      finishUserTurn(s, message.text, message.language);
      break;
    case 'response.created':
      assistantMessage(s, message.response_id);
      ui.transcript.setAttribute('aria-busy', 'true');
      break;
    case 'response.text.delta': {
      const { text } = assistantMessage(s, message.response_id);
      // The first delta often starts with a space; pre-wrap would show it.
      const delta = text.length === 0 ? message.text.trimStart() : message.text;
      updateTranscript(() => text.appendData(delta));
      break;
    }
    case 'response.audio.started': {
      // The page's record that this reply's audio is arriving (tests read it too).
      assistantMessage(s, message.response_id).el.dataset.audio = 'receiving';
      const rate = message.sample_rate || s.outputRate;
      const resampler = new StreamResampler(rate, liveAudio().ctx.sampleRate);
      s.replyAudio = { id: message.response_id, rate, resampler };
      s.pendingPlayback.add(message.response_id);
      break;
    }
    case 'response.audio.done':
      if (s.replyAudio?.id === message.response_id) {
        s.replyAudio = null;
        playbackPort().postMessage({ type: 'end', id: message.response_id });
      }
      break;
    case 'response.done':
      finishResponse(s, message.response_id, message.timings, message.speaker_similarity);
      break;
    case 'response.cancelled': {
      // Also sent after response.done while the server thinks the reply is
      // still playing here. Flush only if it is; its played time is reported
      // once, either by the flush or by the worklet's 'ended'.
      const id = message.response_id;
      if (s.pendingPlayback.has(id) || s.replyAudio?.id === id) flushPlayback(s);
      const entry = s.assistant.get(id);
      if (entry && !entry.done) entry.el.classList.add('interrupted');
      finishResponse(s, id);
      break;
    }
    case 'response.truncated':
      showTruncated(s, message.response_id, message.text ?? '');
      break;
    case 'error':
      if (message.code === 'session_not_found' && s.resuming && !s.started) {
        // It expired, or was ended elsewhere: go on in a new one, on this same connection.
        keepConversation(null);
        s.renewed = true;
        addNote('The earlier conversation could not be resumed (it ended or expired): this is a new one');
        startSession(s);
        break;
      }
      addError(message.code, message.message);
      break;
    default:
      break; // ping, session.ended and anything newer: nothing to do
  }
}

/**
 * The server's answer to session.start: keep its session; a resumed one brings its history.
 * @param {Session} s
 * @param {ServerEvent} message
 */
function onSessionStarted(s, message) {
  const resumed = message.resumed === true;
  keepConversation({ id: message.session_id, token: message.resume_token });
  // The page's record of what the server answered (tests read it too).
  ui.page.dataset.session = resumed ? 'resumed' : 'new';
  removeErrors(); // whatever kept the page from its session is over
  if (resumed) {
    showHistory(message.session_id, Array.isArray(message.history) ? message.history : []);
    addNote('Conversation resumed');
  } else if (!s.renewed && ui.transcript.querySelector('.message')) {
    addNote('New conversation'); // after Disconnect: what is above is over
  }
}

/**
 * A resumed session's history, on screen: the turns this page already shows
 * stay as they are (with their timings and marks), and only the ones it lacks
 * are added: all of them after a reload, else those that ended while the page
 * was away. A reply the server kept only in part (the connection dropped while
 * it played) is marked as cut where the server cut it.
 * @param {string} sessionId
 * @param {any[]} history as the server sent it
 */
function showHistory(sessionId, history) {
  /** @type {{role: 'user' | 'assistant', content: string}[]} */
  const turns = history.filter((t) => (t?.role === 'user' || t?.role === 'assistant') && typeof t.content === 'string');
  let next = 0; // turns[next:] are not on screen
  for (const el of /** @type {NodeListOf<HTMLElement>} */ (ui.transcript.querySelectorAll('.message[data-session]'))) {
    if (el.dataset.session !== sessionId || el.classList.contains('partial')) continue;
    const role = el.classList.contains('user') ? 'user' : 'assistant';
    const shown = normWords(shownText(el));
    for (let q = next; q < turns.length; q++) {
      const kept = normWords(turns[q].content);
      // A turn the server kept empty (a reply cut before a word was heard) has nothing to match.
      if (turns[q].role !== role || kept.length === 0 || !isPrefix(kept, shown)) continue;
      if (role === 'assistant' && kept.length < shown.length) markCut(el, turns[q].content);
      next = q + 1;
      break;
    }
  }
  for (const turn of turns.slice(next)) {
    const text = turn.content.trim();
    if (!text) continue;
    addMessage(turn.role, text).dataset.restored = 'true';
  }
}

/**
 * What a message says (for an assistant one: all of the reply, heard or not).
 * @param {HTMLElement} el
 * @returns {string}
 */
function shownText(el) {
  if (el.classList.contains('user')) return el.textContent;
  return [...el.childNodes]
    .filter((n) => n.nodeType === Node.TEXT_NODE || /** @type {Element} */ (n).classList?.contains('unheard'))
    .map((n) => n.textContent)
    .join('');
}

/**
 * Whether word list `a` (the server's, perhaps cut) begins word list `b` (the page's).
 * @param {string[]} a
 * @param {string[]} b
 */
const isPrefix = (a, b) => a.length <= b.length && a.every((w, i) => w === b[i]);

/**
 * The in-progress user turn: the stable words as usual, the rest still tentative.
 * @param {Session} s
 * @param {string} text
 * @param {string} stable
 */
function showPartial(s, text, stable) {
  if (!s.partial) {
    s.partial = addMessage('user', '');
    s.partial.classList.add('partial');
  }
  const [settled, tentative] = splitWords(text, stable);
  const a = document.createElement('span');
  a.className = 'stable';
  a.textContent = settled;
  const b = document.createElement('span');
  b.className = 'tentative';
  b.textContent = tentative;
  const partial = s.partial;
  updateTranscript(() => partial.replaceChildren(a, b));
}

/**
 * @param {Session} s
 * @param {string} text
 * @param {string} [language]
 */
function finishUserTurn(s, text, language) {
  const el = s.partial;
  s.partial = null;
  if (!text) {
    el?.remove();
    return;
  }
  const message = el ?? addMessage('user', '');
  message.classList.remove('partial');
  if (language) {
    message.dataset.language = language;
    message.title = `Language: ${language}`;
  }
  updateTranscript(() => (message.textContent = text));
}

/**
 * Cut `text` after as many words as `prefix` has: [head, tail]. `prefix` is
 * the server's word-normalised version of text's start (single spaces).
 * @param {string} text
 * @param {string} prefix
 * @returns {[string, string]}
 */
function splitWords(text, prefix) {
  const count = prefix.split(/\s+/).filter(Boolean).length;
  if (count === 0) return ['', text];
  const word = /\S+/g;
  let end = 0;
  for (let k = 0; k < count; k++) {
    const match = word.exec(text);
    if (!match) return [text, ''];
    end = match.index + match[0].length;
  }
  return [text.slice(0, end), text.slice(end)];
}

/**
 * @param {string} text
 * @returns {string[]}
 */
const normWords = (text) =>
  text
    .split(/\s+/)
    .map((w) => w.toLowerCase().replace(/[^\p{L}\p{N}]/gu, ''))
    .filter(Boolean);

/**
 * @param {Session} s
 * @param {string} responseId
 * @returns {AssistantEntry}
 */
function assistantMessage(s, responseId) {
  let entry = s.assistant.get(responseId);
  if (!entry) {
    const el = addMessage('assistant', '');
    const text = document.createTextNode('');
    el.append(text);
    entry = { el, text, done: false };
    s.assistant.set(responseId, entry);
    for (const [id, old] of s.assistant) {
      if (s.assistant.size <= RECENT_RESPONSES) break;
      if (old.done) s.assistant.delete(id);
    }
  }
  return entry;
}

/**
 * @param {Session} s
 * @param {string} responseId
 * @param {Record<string, unknown>} [timings] response.done's
 * @param {unknown} [similarity] response.done's speaker_similarity
 */
function finishResponse(s, responseId, timings, similarity) {
  const entry = s.assistant.get(responseId);
  if (!entry || entry.done) return;
  entry.done = true;
  if (![...s.assistant.values()].some((e) => !e.done)) ui.transcript.removeAttribute('aria-busy');
  const parts = formatTimings(timings);
  // The cloning quality score: how much this reply sounded like the chosen cloned voice.
  if (typeof similarity === 'number') {
    if (parts.length > 0) parts.push(' · ');
    parts.push(`voice match ${similarity.toFixed(2)}`);
  }
  if (parts.length === 0) return;
  const el = document.createElement('p');
  el.className = 'timings';
  el.dataset.testid = 'timings';
  el.append(...parts);
  updateTranscript(() => entry.el.after(el));
}

/**
 * The server cut this reply in its history to what was heard (`heard`). Keep
 * the full text, but strike out the tail that was never played.
 * @param {Session} s
 * @param {string} responseId
 * @param {string} heard
 */
function showTruncated(s, responseId, heard) {
  const entry = s.assistant.get(responseId);
  if (entry) markCut(entry.el, heard);
}

/**
 * Strike out the part of an assistant message after `heard`, what the server kept of it.
 * @param {HTMLElement} el
 * @param {string} heard
 */
function markCut(el, heard) {
  const text = el.firstChild; // an assistant message starts with its reply's text node
  if (!(text instanceof Text)) return;
  const full = text.data + (el.querySelector('.unheard')?.textContent ?? '');
  const heardWords = normWords(heard);
  const fullWords = normWords(full);
  el.dataset.truncated = 'true';
  el.title = heard ? `You heard: “${heard}”` : 'You heard none of this reply';
  el.querySelector('.heard-note')?.remove();
  el.querySelector('.unheard')?.remove();
  if (heardWords.every((w, i) => w === fullWords[i])) {
    const [head, tail] = splitWords(full, heard);
    const gap = tail.length - tail.trimStart().length; // keep the space unstruck
    text.data = head + tail.slice(0, gap);
    if (tail.trim()) {
      const unheard = document.createElement('span');
      unheard.className = 'unheard';
      unheard.dataset.testid = 'unheard';
      unheard.textContent = tail.slice(gap);
      text.after(unheard);
    }
    return;
  }
  // The words do not line up (should not happen): say what was heard instead.
  const note = document.createElement('span');
  note.className = 'heard-note';
  note.dataset.testid = 'unheard';
  note.textContent = heard ? `heard: “${heard}”` : 'not heard';
  updateTranscript(() => el.append(note));
}

/**
 * {asr_ms: 312, preemptive: true, llm_first_token_ms: 420} ->
 * ["asr 312 ms · ", <tag>preemptive</tag>, " · llm first token 420 ms"] (nodes / strings)
 * @param {Record<string, unknown>} [timings]
 */
function formatTimings(timings) {
  /** @type {(string | HTMLElement)[]} */
  const parts = [];
  for (const [name, value] of Object.entries(timings ?? {})) {
    let part;
    if (name === 'preemptive') {
      if (value !== true) continue;
      part = document.createElement('span');
      part.className = 'tag';
      part.dataset.testid = 'preemptive';
      part.title = 'The reply was started at a pause, before the end of the turn was certain';
      part.textContent = 'preemptive';
    } else if (typeof value === 'number' && Number.isFinite(value)) {
      const label = name.replace(/_ms$/, '').replaceAll('_', ' ');
      part = name.endsWith('_ms') ? `${label} ${Math.round(value)} ms` : `${label} ${value}`;
    } else {
      continue;
    }
    if (parts.length > 0) parts.push(' · ');
    parts.push(part);
  }
  return parts;
}

// ---- UI ---------------------------------------------------------------------

/**
 * @param {'user' | 'assistant'} role
 * @param {string} text
 */
function addMessage(role, text) {
  const el = document.createElement('p');
  el.className = `message ${role}`;
  el.dataset.testid = `${role}-message`;
  if (conversation) el.dataset.session = conversation.id; // which conversation it is part of
  el.textContent = text;
  updateTranscript(() => ui.transcript.append(el));
  return el;
}

/**
 * A line in the transcript about the conversation itself (resumed, new, audio lost).
 * @param {string} text
 */
function addNote(text) {
  const el = document.createElement('p');
  el.className = 'note';
  el.dataset.testid = 'transcript-note';
  el.textContent = text;
  updateTranscript(() => ui.transcript.append(el));
}

/**
 * Apply a transcript change, following the bottom if the reader was there.
 * @param {() => void} change
 */
function updateTranscript(change) {
  const t = ui.transcript;
  const atBottom = t.scrollHeight - t.scrollTop - t.clientHeight < 24;
  change();
  if (atBottom) t.scrollTop = t.scrollHeight;
}

/**
 * A banner. `outage`: it tells of something that keeps the page from its
 * session (the connection, the server, a stalled link): one at a time of each
 * kind (`key`, by default the code), gone once the page has its session again.
 * @param {string} code
 * @param {string} message
 * @param {{outage?: boolean, key?: string}} [options]
 */
function addError(code, message, { outage = false, key = code } = {}) {
  const li = document.createElement('li');
  if (outage) {
    removeErrors(key);
    li.dataset.outage = key;
  }
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
  while (ui.errors.children.length > MAX_ERRORS) /** @type {Element} */ (ui.errors.firstElementChild).remove();
}

/**
 * Remove the outage banners of one kind, or all of them.
 * @param {string} [key]
 */
function removeErrors(key) {
  for (const li of /** @type {NodeListOf<HTMLLIElement>} */ (ui.errors.querySelectorAll('li[data-outage]'))) {
    if (key === undefined || li.dataset.outage === key) li.remove();
  }
}

/**
 * @param {string} state the status's `data-state`: idle, connecting, connected, closed or error
 * @param {string} text
 */
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
  ui.ptt.disabled = !live;
  ui.mode.disabled = active; // the mode is fixed for a connection
}

// ---- push to talk -------------------------------------------------------------

function showMode() {
  ui.ptt.hidden = (session?.turnDetection ?? ui.mode.value) !== 'push_to_talk';
}

/** @param {boolean} holding */
function showHolding(holding) {
  ui.ptt.classList.toggle('holding', holding);
  ui.ptt.setAttribute('aria-pressed', String(holding));
  ui.pttLabel.textContent = holding ? 'Release to send' : 'Hold to talk';
  ui.meter.classList.toggle('speaking', holding);
}

function startTalking() {
  const s = session;
  if (!s?.started || !s.pushToTalk || s.holding) return;
  s.holding = true;
  // Talking over the reply: silence it now (the server cancels it when our
  // first frame arrives).
  if (s.pendingPlayback.size > 0) flushPlayback(s);
  showHolding(true);
}

function stopTalking() {
  const s = session;
  if (!s?.holding) return;
  s.holding = false;
  showHolding(false);
  // Send the partial frame the capture worklet still holds, then commit
  // (both from onMicFrame, when the worklet answers).
  s.commitsPending++;
  /** @type {AudioWorkletNode} */ (s.capture).port.postMessage('flush'); // there while the session is
}

ui.connect.addEventListener('click', () => (session ? disconnect() : connect()));

try {
  const saved = localStorage.getItem(MODE_KEY);
  if (saved === 'vad' || saved === 'push_to_talk') ui.mode.value = saved;
} catch {
  // storage unavailable: keep the default
}
showMode();
if (conversation) ui.status.textContent = 'Disconnected — Connect to resume the conversation';
ui.mode.addEventListener('change', () => {
  showMode();
  try {
    localStorage.setItem(MODE_KEY, ui.mode.value);
  } catch {
    // not remembered; harmless
  }
});

ui.ptt.addEventListener('pointerdown', (event) => {
  if (event.button !== 0) return;
  event.preventDefault(); // no focus change, text selection or touch scrolling
  ui.ptt.setPointerCapture(event.pointerId);
  startTalking();
});
for (const type of ['pointerup', 'pointercancel', 'lostpointercapture']) {
  ui.ptt.addEventListener(type, stopTalking);
}
ui.ptt.addEventListener('contextmenu', (event) => event.preventDefault()); // long touch

// Space anywhere but in a text field holds the talk button. It must not also
// press whatever button has focus (Connect would disconnect).
/** @param {EventTarget | null} target */
const typingInto = (target) =>
  target instanceof HTMLInputElement || target instanceof HTMLSelectElement || target instanceof HTMLTextAreaElement;
document.addEventListener('keydown', (event) => {
  if (event.code !== 'Space' || !session?.pushToTalk || typingInto(event.target) || ui.page.hidden) return;
  event.preventDefault();
  if (!event.repeat) startTalking();
});
document.addEventListener('keyup', (event) => {
  if (event.code !== 'Space' || !session?.pushToTalk) return;
  if (!session.holding && typingInto(event.target)) return;
  event.preventDefault();
  stopTalking();
});
// Releasing the key or button in another window would never reach us.
window.addEventListener('blur', stopTalking);

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

// Leaving the page: close the socket cleanly rather than let it drop. The
// session stays on the server (until it expires) for a reload of this tab to resume.
window.addEventListener('pagehide', () => {
  if (session) leave();
});

// The voices the TTS service offers (cloned ones only where an engine can speak them).
listVoices()
  .then(({ voices }) => fillVoiceSelect(ui.voice, voices))
  .catch((err) => addError('voices', `Could not list voices: ${err.message}`));
