// One connection of the talk page: its socket, microphone, reply playback and the messages it
// is filling in, and the conversation's events while it lasts. The page makes one per Connect
// (or reconnect) and closes it when the connection ends; nothing of it is kept after that.

import { INPUT_RATE } from './microphone.js';
import { showHolding, showLevel } from './view.js';
/** @import { Connection, ServerEvent } from './connection.js' */
/** @import { MicFrame, Microphone } from './microphone.js' */
/** @import { Playback } from './playback.js' */
/** @import { Conversation } from './settings.js' */
/** @import { Transcript, Turns } from './transcript.js' */
/** @import { TalkView } from './view.js' */

const FRAME_MS = 100; // what one microphone frame holds

export class Session {
  /**
   * @param {string} turnDetection `vad` or `push_to_talk`, fixed for the connection
   * @param {TalkView} view
   * @param {Transcript} transcript
   * @param {Turns} turns
   */
  constructor(turnDetection, view, transcript, turns) {
    this.turnDetection = turnDetection;
    this.pushToTalk = turnDetection === 'push_to_talk';
    this.view = view;
    this.transcript = transcript;
    this.turns = turns;
    this.holding = false; // push-to-talk: the talk button is down
    this.commitsPending = 0; // releases waiting for the capture worklet's last partial frame
    /** @type {Connection | null} */
    this.connection = null;
    /** @type {Microphone | null} */
    this.mic = null; // none: typed turns only
    /** @type {Playback | null} */
    this.playback = null; // there from session.started
    this.started = false;
    /** @type {Conversation | null} */
    this.resuming = null; // the conversation this connection's session.start resumes
    this.renewed = false; // the server no longer knew that one: this connection starts a new one
  }

  /** @param {object} message */
  send(message) {
    this.connection?.send(message);
  }

  /**
   * A typed turn.
   * @param {string} text
   */
  say(text) {
    this.send({ type: 'text.input', text });
    this.turns.addTyped(text); // the server does not echo typed turns as transcripts
  }

  /** Stop: cancel the reply, and go quiet now rather than at response.cancelled. */
  cancelReply() {
    this.send({ type: 'response.cancel' });
    this.flushPlayback();
  }

  /** Push-to-talk pressed. */
  startTalking() {
    if (!this.started || !this.mic || !this.pushToTalk || this.holding) return;
    this.holding = true;
    // Talking over the reply: silence it now (the server cancels it when our first frame arrives).
    if (this.playback?.playing) this.flushPlayback();
    showHolding(this.view, true);
  }

  /** Push-to-talk released. */
  stopTalking() {
    if (!this.holding || !this.mic) return;
    this.holding = false;
    showHolding(this.view, false);
    // Send the partial frame the capture worklet still holds, then commit (both from
    // onMicFrame, when the worklet answers).
    this.commitsPending++;
    this.mic.flush();
  }

  /** Stop reply audio now, marking what was cut. */
  flushPlayback() {
    if (!this.playback) return;
    for (const id of this.playback.flush()) this.turns.replies.get(id)?.el.classList.add('interrupted');
  }

  /** @param {MicFrame} frame */
  onMicFrame({ pcm, level, flushed }) {
    const connection = this.connection;
    const open = this.started && connection?.open;
    if (flushed) {
      // The capture worklet's answer to a push-to-talk release: the end of the turn's audio,
      // then the commit. Frames of a new hold come after it.
      if (this.commitsPending === 0) return;
      this.commitsPending--;
      if (open && pcm.length > 0) connection.sendAudio(pcm, (pcm.length / INPUT_RATE) * 1000);
      this.send({ type: 'input.commit' });
      return;
    }
    showLevel(this.view, level);
    if (!open || (this.pushToTalk && !this.holding)) return;
    connection.sendAudio(pcm, FRAME_MS);
  }

  /**
   * The conversation's events while the session runs (the page itself takes session.started
   * and errors).
   * @param {ServerEvent} message
   */
  onEvent(message) {
    switch (message.type) {
      case 'vad.speech_started':
        // Not a barge-in by itself: it may be the reply's own echo. The server decides, and says
        // so with response.cancelled, which flushes playback.
        this.view.meter.classList.add('speaking');
        break;
      case 'vad.speech_stopped':
        this.view.meter.classList.remove('speaking');
        break;
      case 'transcript.partial':
        this.turns.showPartial(message.text ?? '', message.stable ?? '');
        break;
      case 'transcript.final':
        this.turns.finishUserTurn(message.text, message.language);
        break;
      case 'response.created':
        this.turns.reply(message.response_id);
        this.transcript.setBusy(true);
        break;
      case 'response.text.delta':
        this.turns.appendText(message.response_id, message.text);
        break;
      case 'response.audio.started':
        // The page's record that this reply's audio is arriving (tests read it too).
        this.turns.reply(message.response_id).el.dataset.audio = 'receiving';
        this.playback?.begin(message.response_id, message.sample_rate || this.playback.player.rate);
        break;
      case 'response.audio.done':
        this.playback?.end(message.response_id);
        break;
      case 'response.done':
        this.turns.finishReply(message.response_id, message.timings, message.speaker_similarity);
        break;
      case 'response.cancelled':
        // Also sent after response.done while the server thinks the reply is still playing here.
        // Flush only if it is; its played time is reported once, by the flush or by its end.
        if (this.playback?.has(message.response_id)) this.flushPlayback();
        this.turns.cancelReply(message.response_id);
        break;
      case 'response.truncated':
        this.turns.showTruncated(message.response_id, message.text ?? '');
        break;
      default:
        break; // ping, session.ended and anything newer: nothing to do
    }
  }

  /** The connection is over: stop playing and capturing, close the socket, drop what was in progress. */
  close() {
    this.holding = false;
    this.commitsPending = 0;
    this.flushPlayback(); // marks the replies cut short
    this.playback?.close();
    this.mic?.close();
    this.connection?.close();
    this.turns.drop();
    showLevel(this.view, 0);
    this.view.meter.classList.remove('speaking');
    showHolding(this.view, false);
  }
}
