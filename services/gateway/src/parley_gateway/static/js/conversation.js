// The talk page: a spoken (or typed) conversation with the server.
//
//   mic -> capture worklet (16 kHz PCM16, 100 ms frames) -> WebSocket binary frames
//   WebSocket reply PCM16, at the rate the page asked for -> playback
//
// mount() builds the page (talk/view.js) and a TalkPage, which holds everything the page has:
// the AudioContext (made on the first Connect, as browsers start audio only after a user
// gesture), the conversation it talks in, and the current connection's Session
// (talk/session.js: socket, microphone, playback, the messages it fills in), which connect()
// makes and teardown() closes and drops; nothing of it outlives the connection, and no module
// keeps any state of its own.
//
// Turn taking ("mode", fixed per connection): "vad" streams the microphone all the time and
// the server ends turns on silence; "push_to_talk" sends audio only while the talk button (or
// Space) is held, and input.commit on release. Without a microphone (no secure context, none
// allowed), typed turns still work, and the page says why there is no microphone.
//
// A conversation outlives its connection: the page keeps the session id and resume token the
// server gave (also in sessionStorage, so a reload of the tab goes on with it too) and resumes
// that session whenever it connects again; only Disconnect ends it.

import { authHeaders, fillVoiceSelect, listVoices, request, withToken } from './api.js';
import { PageAudio } from './talk/audio.js';
import { createBanners } from './talk/banners.js';
import { Connection } from './talk/connection.js';
import { INPUT_RATE, Microphone, microphoneBarred, microphoneRefused } from './talk/microphone.js';
import { BufferPlayer, Playback, workletPlayer } from './talk/playback.js';
import { saveConversation, saveMode, savedConversation, savedMode } from './talk/settings.js';
import { Session } from './talk/session.js';
import { Transcript, Turns } from './talk/transcript.js';
import { buildView, setStatus, showMicrophone } from './talk/view.js';
/** @import { ServerEvent } from './talk/connection.js' */
/** @import { Player } from './talk/playback.js' */
/** @import { Conversation } from './talk/settings.js' */
/** @import { TalkView } from './talk/view.js' */

const DEFAULT_OUTPUT_RATE = 24000; // what a server speaks at that does not say
// After a connection drops unexpectedly (Wi-Fi, a proxy, a gateway restart): wait, then reconnect.
const RECONNECT_DELAYS_MS = [1000, 2000, 4000, 8000, 15000];
// Errors before session.started after which the server closes the socket itself: the close
// decides (a reconnect goes on trying). Any other refusal ends the attempt, for the user to fix.
const CLOSING_ERRORS = ['too_many_sessions', 'too_many_client_sessions', 'session_start_timeout', 'gateway_draining'];

/** @param {HTMLElement} root */
export async function mount(root) {
  const page = new TalkPage(buildView(root));
  page.listen();
  // The voices the TTS service offers (cloned ones only where an engine can speak them).
  try {
    const { voices } = await listVoices();
    fillVoiceSelect(page.view.voice, voices);
  } catch (err) {
    page.banners.add('voices', `Could not list voices: ${/** @type {Error} */ (err).message}`);
  }
}

class TalkPage {
  /** @param {TalkView} view */
  constructor(view) {
    this.view = view;
    this.banners = createBanners(view.errors);
    this.transcript = new Transcript(view.transcript);
    /** @type {PageAudio | null} */
    this.audio = null;
    /** @type {Session | null} */
    this.session = null;
    // The server's session this page talks in: resumed on every (re)connect until Disconnect
    // ends it or the server no longer knows it.
    this.conversation = savedConversation();
    /** @type {{attempt: number, timer: number | null}} */
    this.reconnect = { attempt: 0, timer: null };
  }

  // ---- the page's controls ------------------------------------------------------------

  listen() {
    const view = this.view;
    view.mode.value = savedMode() ?? view.mode.value;
    this.showMode();
    if (this.conversation) view.status.textContent = 'Disconnected — Connect to resume the conversation';
    view.connect.addEventListener('click', () => (this.session ? this.disconnect() : this.connect()));
    view.mode.addEventListener('change', () => {
      this.showMode();
      saveMode(view.mode.value);
    });

    view.ptt.addEventListener('pointerdown', (event) => {
      if (event.button !== 0) return;
      event.preventDefault(); // no focus change, text selection or touch scrolling
      view.ptt.setPointerCapture(event.pointerId);
      this.session?.startTalking();
    });
    for (const type of ['pointerup', 'pointercancel', 'lostpointercapture']) {
      view.ptt.addEventListener(type, () => this.session?.stopTalking());
    }
    view.ptt.addEventListener('contextmenu', (event) => event.preventDefault()); // long touch

    // Space anywhere but in a text field holds the talk button. It must not also press
    // whatever button has focus (Connect would disconnect).
    /** @param {EventTarget | null} target */
    const typingInto = (target) =>
      target instanceof HTMLInputElement || target instanceof HTMLSelectElement || target instanceof HTMLTextAreaElement;
    document.addEventListener('keydown', (event) => {
      if (event.code !== 'Space' || !this.session?.mic || !this.session.pushToTalk) return;
      if (typingInto(event.target) || view.page.hidden) return;
      event.preventDefault();
      if (!event.repeat) this.session.startTalking();
    });
    document.addEventListener('keyup', (event) => {
      const s = this.session;
      if (event.code !== 'Space' || !s?.mic || !s.pushToTalk) return;
      if (!s.holding && typingInto(event.target)) return;
      event.preventDefault();
      s.stopTalking();
    });
    // Releasing the key or button in another window would never reach us.
    window.addEventListener('blur', () => this.session?.stopTalking());

    view.composer.addEventListener('submit', (event) => {
      event.preventDefault();
      const text = view.textInput.value.trim();
      const s = this.session;
      if (!text || !s?.started) return;
      s.say(text);
      view.textInput.value = '';
    });

    view.stop.addEventListener('click', () => {
      if (this.session?.started) this.session.cancelReply();
    });

    // Leaving the page: close the socket cleanly rather than let it drop. The session stays on
    // the server (until it expires) for a reload of this tab to resume.
    window.addEventListener('pagehide', () => {
      if (this.session) this.leave();
    });
  }

  showMode() {
    const view = this.view;
    const pushToTalk = (this.session?.turnDetection ?? view.mode.value) === 'push_to_talk';
    view.ptt.hidden = !pushToTalk || view.page.dataset.mic === 'unavailable';
  }

  // ---- connecting -----------------------------------------------------------------------

  /**
   * The page's AudioContext, made inside the click handler (user-gesture rule).
   * @returns {PageAudio}
   */
  ensureAudio() {
    if (this.audio) return this.audio;
    const audio = new PageAudio();
    // On the page, for whoever needs to know whether reply audio can be heard now (tests do).
    audio.ctx.addEventListener('statechange', () => {
      document.body.dataset.audio = audio.ctx.state;
    });
    audio.ready.catch(() => {
      // Let the next click start over instead of reusing a broken context.
      if (this.audio === audio) this.audio = null;
      audio.close();
    });
    this.audio = audio;
    return audio;
  }

  async connect() {
    clearTimeout(this.reconnect.timer ?? undefined);
    this.reconnect.timer = null;
    const turns = new Turns(this.transcript, () => this.conversation?.id ?? null);
    const s = new Session(this.view.mode.value, this.view, this.transcript, turns);
    this.session = s;
    setStatus(this.view, 'connecting', 'Connecting…');
    try {
      const audio = this.ensureAudio();
      const resumed = audio.ctx.resume(); // must start inside the click
      this.view.page.dataset.outputRate = String(audio.rate); // the page's record of the rate it asks for
      if (!(await this.serverReady())) {
        if (this.session !== s) return;
        this.teardown('error', 'Server not ready');
        if (this.reconnect.attempt > 0) this.scheduleReconnect();
        return;
      }
      await audio.ready;
      if (this.session !== s) return;
      let noMic = microphoneBarred(audio.worklets);
      if (noMic === null) {
        try {
          const mic = await Microphone.open(audio.ctx, (frame) => s.onMicFrame(frame));
          if (this.session !== s) {
            mic.close(); // cancelled while the permission prompt was open
            return;
          }
          s.mic = mic;
        } catch (err) {
          if (this.session !== s) return;
          noMic = microphoneRefused(err);
        }
      }
      showMicrophone(this.view, noMic);
      this.showMode();
      const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
      const [url] = await Promise.all([withToken(`${scheme}//${location.host}/v1/conversation`), resumed]);
      if (this.session !== s) return;
      this.openConnection(s, url);
    } catch (err) {
      if (this.session !== s) return;
      const error = /** @type {Error} */ (err); // a DOMException, mostly
      this.banners.add('audio', error.message || String(error));
      this.teardown('error', 'Audio unavailable');
    }
  }

  /** Whether the gateway says every service is up; if not, say what it waits for. */
  async serverReady() {
    try {
      let response = await fetch('readyz', { headers: authHeaders() });
      if (response.status === 401) {
        await request('v1/voices'); // renews the token, asking for the key if need be
        response = await fetch('readyz', { headers: authHeaders() });
      }
      if (response.ok) return true;
      const body = await response.json();
      const crashing = Object.keys(body.crashing ?? {});
      this.banners.add(
        'not_ready',
        `The server is not ready: waiting for ${(body.missing ?? []).join(', ') || 'services'}` +
          (crashing.length ? ` (crashing: ${crashing.join(', ')})` : ''),
        { outage: true },
      );
    } catch {
      this.banners.add('not_ready', 'The server cannot be reached', { outage: true });
    }
    return false;
  }

  scheduleReconnect() {
    const reconnect = this.reconnect;
    if (reconnect.attempt >= RECONNECT_DELAYS_MS.length) {
      this.banners.add('connection', 'Gave up reconnecting; press Connect to try again', { outage: true, key: 'gave_up' });
      return;
    }
    const delay = RECONNECT_DELAYS_MS[reconnect.attempt++];
    setStatus(this.view, 'connecting', `Connection lost — reconnecting in ${delay / 1000} s…`);
    reconnect.timer = setTimeout(() => {
      reconnect.timer = null;
      this.connect();
    }, delay);
  }

  /**
   * @param {Session} s
   * @param {string} url
   */
  openConnection(s, url) {
    s.connection = new Connection(url, {
      open: () => {
        setStatus(this.view, 'connecting', this.conversation ? 'Resuming the conversation…' : 'Starting session…');
        this.startSession(s);
      },
      event: (message) => this.onEvent(s, message),
      audio: (buffer) => s.playback?.push(buffer),
      garbled: (problem) => this.banners.add('client', problem),
      closed: (event) => {
        const detail = `code ${event.code}${event.reason ? `: ${event.reason}` : ''}`;
        const unexpected = event.code !== 1000;
        if (unexpected) this.banners.add('connection', `Connection closed (${detail})`, { outage: true });
        this.teardown('closed', `Disconnected (${detail})`);
        if (unexpected && (s.started || this.reconnect.attempt > 0)) this.scheduleReconnect();
      },
      stalled: (stalled, droppedMs) => {
        // What the user says now is lost: they hear of it at once, and of how much once audio gets through.
        if (stalled) {
          this.view.page.dataset.mic = 'dropping';
          this.banners.add(
            'slow_connection',
            'The connection is too slow: your microphone is not getting through, and what you say now is lost',
            { outage: true },
          );
        } else {
          delete this.view.page.dataset.mic;
          this.banners.removeOutages('slow_connection');
          this.transcript.addNote(`The connection was too slow: ${(droppedMs / 1000).toFixed(1)} s of microphone audio was lost`);
        }
      },
    });
  }

  /**
   * session.start: resume this page's conversation if it has one, else a new one; the reply
   * audio at the rate the page plays, so that nothing is resampled here.
   * @param {Session} s
   */
  startSession(s) {
    /** @type {Record<string, string | number>} */
    const start = {
      type: 'session.start',
      input_sample_rate: INPUT_RATE,
      output_sample_rate: /** @type {PageAudio} */ (this.audio).rate,
      turn_detection: s.turnDetection,
    };
    if (this.view.voice.value) start.voice = this.view.voice.value;
    const prompt = this.view.systemPrompt.value.trim();
    if (prompt) start.system_prompt = prompt;
    s.resuming = this.conversation;
    if (this.conversation) {
      start.session_id = this.conversation.id;
      start.resume_token = this.conversation.token;
    }
    s.send(start);
  }

  /** User-initiated end of the session: the conversation is over (the server forgets it). */
  disconnect() {
    clearTimeout(this.reconnect.timer ?? undefined);
    this.reconnect.timer = null;
    this.reconnect.attempt = 0;
    if (this.session?.started) this.session.send({ type: 'session.end' });
    this.keepConversation(null);
    this.teardown('idle', 'Disconnected');
  }

  /** Leaving or reloading the page: close the socket but keep the session, which a reload resumes. */
  leave() {
    clearTimeout(this.reconnect.timer ?? undefined);
    this.reconnect.timer = null;
    this.teardown('idle', 'Disconnected');
  }

  /** @param {Conversation | null} value */
  keepConversation(value) {
    this.conversation = value;
    saveConversation(value);
  }

  /**
   * Drop the connection and everything it held.
   * @param {string} state the status's `data-state`
   * @param {string} text
   */
  teardown(state, text) {
    const s = this.session;
    if (!s) return;
    this.session = null;
    s.close();
    if (s.connection?.stalled) {
      delete this.view.page.dataset.mic;
      this.banners.removeOutages('slow_connection');
    }
    // Nothing to play or capture until the next Connect (which resumes it).
    this.audio?.ctx.suspend();
    setStatus(this.view, state, text);
  }

  // ---- audio ------------------------------------------------------------------------------

  /**
   * A player for reply audio at `rate`: the playback worklet at the context's own rate, else
   * AudioBuffers at the server's, resampled by the browser.
   * @param {number} rate
   * @returns {Player}
   */
  playerFor(rate) {
    const audio = /** @type {PageAudio} */ (this.audio); // there while a session is
    return audio.worklets && rate === audio.rate ? workletPlayer(audio.ctx) : new BufferPlayer(audio.ctx, rate);
  }

  // ---- server events ------------------------------------------------------------------------

  /**
   * @param {Session} s
   * @param {ServerEvent} message
   */
  onEvent(s, message) {
    if (message.type === 'session.started') this.onSessionStarted(s, message);
    else if (message.type === 'error') this.onError(s, message);
    else s.onEvent(message);
  }

  /**
   * The server's answer to session.start: keep its session; a resumed one brings its history.
   * @param {Session} s
   * @param {ServerEvent} message
   */
  onSessionStarted(s, message) {
    s.started = true;
    this.reconnect.attempt = 0;
    // The rate it speaks at: the page's, unless the server does not take requests for one.
    const rate = message.output_sample_rate || DEFAULT_OUTPUT_RATE;
    s.playback = new Playback((r) => this.playerFor(r), rate, {
      send: (event) => s.send(event),
      started: (id) => {
        const reply = s.turns.replies.get(id);
        if (reply) reply.el.dataset.playing = 'true';
      },
      ended: (id) => {
        // The page's own record that this reply was heard to its end (tests read it too).
        const reply = s.turns.replies.get(id);
        if (reply) reply.el.dataset.played = 'true';
      },
    });
    const resumed = message.resumed === true;
    this.keepConversation({ id: message.session_id, token: message.resume_token });
    // The page's record of what the server answered (tests read it too).
    this.view.page.dataset.session = resumed ? 'resumed' : 'new';
    this.banners.removeOutages(); // whatever kept the page from its session is over
    if (resumed) {
      this.transcript.showHistory(message.session_id, Array.isArray(message.history) ? message.history : []);
      this.transcript.addNote('Conversation resumed');
    } else if (!s.renewed && this.transcript.hasMessages()) {
      this.transcript.addNote('New conversation'); // after Disconnect: what is above is over
    }
    const listening = s.pushToTalk ? 'Connected — hold to talk' : 'Connected — listening';
    setStatus(this.view, 'connected', s.mic ? listening : 'Connected — type your messages');
  }

  /**
   * @param {Session} s
   * @param {ServerEvent} message
   */
  onError(s, message) {
    if (message.code === 'session_not_found' && s.resuming && !s.started) {
      // It expired, or was ended elsewhere: go on in a new one, on this same connection.
      this.keepConversation(null);
      s.renewed = true;
      this.transcript.addNote('The earlier conversation could not be resumed (it ended or expired): this is a new one');
      this.startSession(s);
      return;
    }
    this.banners.add(message.code, message.message);
    if (!s.started && !CLOSING_ERRORS.includes(message.code)) {
      // session.start refused (a voice it does not have, say): over, until the user tries again.
      this.reconnect.attempt = 0;
      this.teardown('error', `Could not start the session (${message.code})`);
    }
  }
}
