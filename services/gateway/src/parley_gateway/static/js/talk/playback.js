// Reply audio of one connection: PCM16 frames from the socket, played in order, and the
// protocol's reports of it (response.audio.playing when a reply starts to be heard,
// response.audio.played with how much of it was heard).
//
// The page asks the server to speak at its AudioContext's rate, so frames are only converted
// to floats here, never resampled. A server that speaks at another rate anyway (an older one)
// is played through AudioBuffers made at its rate, which the browser resamples itself; so are
// replies where the browser has no AudioWorklet (no secure context).

const PREBUFFER_MS = 60; // jitter buffer before a reply starts, and after an underrun

/**
 * What a player is told: a chunk of a reply, the end of a reply, stop now.
 * @typedef {{type: 'push', id: string, samples: Float32Array}
 *   | {type: 'end', id: string} | {type: 'flush'}} PlayerCommand
 */
/**
 * What a player answers, `played` in samples at its rate (see playback-worklet.js).
 * @typedef {{type: 'started', id: string} | {type: 'ended', id: string, played: number}
 *   | {type: 'flushed', id: string | null, played: number}} PlayerReport
 */
/**
 * Plays reply audio at `rate`.
 * @typedef {object} Player
 * @property {number} rate
 * @property {(command: PlayerCommand) => void} post
 * @property {((report: PlayerReport) => void) | null} onreport
 * @property {() => void} close
 */

/**
 * The playback worklet, at the context's own rate.
 * @param {AudioContext} ctx with playback-worklet.js loaded
 * @returns {Player}
 */
export function workletPlayer(ctx) {
  const node = new AudioWorkletNode(ctx, 'playback-processor', {
    numberOfInputs: 0,
    outputChannelCount: [1],
    processorOptions: { prebufferMs: PREBUFFER_MS },
  });
  node.connect(ctx.destination);
  /** @type {Player} */
  const player = {
    rate: ctx.sampleRate,
    post: (command) => {
      if (command.type === 'push') node.port.postMessage(command, [command.samples.buffer]);
      else node.port.postMessage(command);
    },
    onreport: null,
    close: () => {
      node.port.onmessage = null;
      node.port.postMessage({ type: 'close' });
      node.disconnect();
    },
  };
  node.port.onmessage = (event) => player.onreport?.(event.data);
  return player;
}

/** The same, on the main thread: AudioBufferSourceNodes scheduled back to back at any rate. */
export class BufferPlayer {
  /**
   * @param {AudioContext} ctx
   * @param {number} rate the rate of the samples it is given
   */
  constructor(ctx, rate) {
    this.ctx = ctx;
    this.rate = rate;
    /** @type {((report: PlayerReport) => void) | null} */
    this.onreport = null;
    /** @type {{id: string, source: AudioBufferSourceNode, start: number, length: number}[]} */
    this.chunks = []; // scheduled, oldest first; a reply's go once it has ended
    this.next = 0; // context time the next chunk starts at
    /** @type {Set<string>} */
    this.started = new Set(); // replies whose first sample is scheduled
    /** @type {Set<number>} */
    this.timers = new Set();
  }

  /** @param {PlayerCommand} command */
  post(command) {
    if (command.type === 'push') this.push(command.id, command.samples);
    else if (command.type === 'end') this.end(command.id);
    else this.flush();
  }

  /**
   * @param {string} id
   * @param {Float32Array} samples
   */
  push(id, samples) {
    if (samples.length === 0) return;
    const buffer = this.ctx.createBuffer(1, samples.length, this.rate);
    buffer.copyToChannel(/** @type {Float32Array<ArrayBuffer>} */ (samples), 0);
    const source = this.ctx.createBufferSource();
    source.buffer = buffer;
    source.connect(this.ctx.destination);
    const now = this.ctx.currentTime;
    const start = Math.max(this.next, now + PREBUFFER_MS / 1000); // after an underrun: buffer again
    source.start(start);
    this.next = start + samples.length / this.rate;
    this.chunks.push({ id, source, start, length: samples.length });
    if (!this.started.has(id)) {
      this.started.add(id);
      this.later(start - now, () => this.onreport?.({ type: 'started', id }));
    }
  }

  /** @param {string} id */
  end(id) {
    const last = this.chunks.findLast((chunk) => chunk.id === id);
    const ended = () => {
      const played = this.playedOf(id);
      this.chunks = this.chunks.filter((chunk) => chunk.id !== id);
      this.started.delete(id);
      this.onreport?.({ type: 'ended', id, played });
    };
    if (last) last.source.onended = ended;
    else ended();
  }

  flush() {
    const now = this.ctx.currentTime;
    const playing = this.chunks.find((chunk) => chunk.start <= now) ?? null;
    const id = playing?.id ?? null;
    const played = id === null ? 0 : this.playedOf(id);
    for (const chunk of this.chunks) {
      chunk.source.onended = null;
      chunk.source.stop();
    }
    this.chunks = [];
    this.started.clear();
    this.next = 0;
    for (const timer of this.timers) clearTimeout(timer);
    this.timers.clear();
    this.onreport?.({ type: 'flushed', id, played });
  }

  /**
   * Samples of reply `id` played by now.
   * @param {string} id
   */
  playedOf(id) {
    const now = this.ctx.currentTime;
    return this.chunks
      .filter((chunk) => chunk.id === id)
      .reduce((sum, chunk) => sum + Math.max(0, Math.min(chunk.length, Math.round((now - chunk.start) * this.rate))), 0);
  }

  /**
   * @param {number} seconds
   * @param {() => void} then
   */
  later(seconds, then) {
    const timer = setTimeout(() => {
      this.timers.delete(timer);
      then();
    }, Math.max(0, seconds * 1000));
    this.timers.add(timer);
  }

  close() {
    this.onreport = null;
    this.flush();
  }
}

/**
 * What a reply's playback tells the rest of the page.
 * @typedef {object} PlaybackEvents
 * @property {(message: object) => void} send a protocol message to the server
 * @property {(id: string) => void} started reply `id` is being heard now
 * @property {(id: string) => void} ended all of reply `id` was heard
 */

/** One connection's reply audio. */
export class Playback {
  /**
   * @param {(rate: number) => Player} playerFor a player for audio at this rate
   * @param {number} rate the rate the server said it speaks at
   * @param {PlaybackEvents} events
   */
  constructor(playerFor, rate, events) {
    this.playerFor = playerFor;
    this.events = events;
    /** @type {{id: string, rate: number} | null} */
    this.reply = null; // the reply whose binary frames are arriving
    /** @type {Set<string>} */
    this.pending = new Set(); // replies with audio whose played time is not yet reported
    // Flushes the player has yet to answer, oldest first: the replies each one settles.
    /** @type {Set<string>[]} */
    this.flushes = [];
    /** @type {Map<string, number>} */
    this.receivedMs = new Map(); // response_id -> ms of its audio received, at the server's rate
    /** @type {Player} */
    this.player = this.use(playerFor(rate));
  }

  /**
   * @param {Player} player
   * @returns {Player}
   */
  use(player) {
    player.onreport = (report) => this.onReport(report);
    return player;
  }

  /**
   * response.audio.started: its frames follow.
   * @param {string} id
   * @param {number} rate
   */
  begin(id, rate) {
    if (rate !== this.player.rate) {
      // The server changed its rate mid-session (it should not): play it as it comes. What
      // the old player had is dropped unheard.
      this.player.onreport = null;
      this.player.close();
      for (const id of [...this.pending, ...this.flushes.flatMap((flush) => [...flush])]) this.reportPlayed(id, 0);
      this.pending.clear();
      this.flushes = [];
      this.player = this.use(this.playerFor(rate));
    }
    this.reply = { id, rate };
    this.pending.add(id);
  }

  /**
   * A binary frame: PCM16LE samples of the current reply.
   * @param {ArrayBuffer} buffer
   */
  push(buffer) {
    const reply = this.reply;
    if (!reply) return; // no reply playing, or it was interrupted
    // Int16Array reads PCM16LE natively on the little-endian platforms browsers run on.
    const pcm = new Int16Array(buffer);
    this.receivedMs.set(reply.id, (this.receivedMs.get(reply.id) ?? 0) + (pcm.length / reply.rate) * 1000);
    if (pcm.length > 0) this.player.post({ type: 'push', id: reply.id, samples: Float32Array.from(pcm, (v) => v / 32768) });
  }

  /**
   * response.audio.done.
   * @param {string} id
   */
  end(id) {
    if (this.reply?.id !== id) return;
    this.reply = null;
    this.player.post({ type: 'end', id });
  }

  /**
   * Whether reply `id` is being received or played.
   * @param {string} id
   */
  has(id) {
    return this.pending.has(id) || this.reply?.id === id;
  }

  get playing() {
    return this.pending.size > 0;
  }

  /**
   * Stop now; played time is reported when the player answers.
   * @returns {Set<string>} the replies cut short
   */
  flush() {
    const cut = new Set(this.pending);
    this.flushes.push(cut);
    this.pending.clear();
    this.reply = null; // drop the rest of the interrupted reply's frames
    this.player.post({ type: 'flush' });
    return cut;
  }

  /** The connection is over: nothing more is played or reported. */
  close() {
    this.player.onreport = null;
    this.player.post({ type: 'flush' });
    this.player.close();
  }

  /** @param {PlayerReport} report */
  onReport(report) {
    if (report.type === 'started') {
      this.events.started(report.id);
      // The server times its echo guard from here: what the microphone hears now may be this reply.
      if (this.pending.has(report.id)) this.events.send({ type: 'response.audio.playing', response_id: report.id });
    } else if (report.type === 'ended') {
      this.events.ended(report.id);
      if (this.pending.delete(report.id)) {
        this.reportPlayed(report.id, report.played, true);
        return;
      }
      // It finished playing just before a flush that has not been answered yet.
      for (const flush of this.flushes) {
        if (flush.delete(report.id)) {
          this.reportPlayed(report.id, report.played, true);
          return;
        }
      }
    } else {
      const flush = /** @type {Set<string>} */ (this.flushes.shift()); // each flush is answered once
      for (const id of flush) this.reportPlayed(id, id === report.id ? report.played : 0);
    }
  }

  /**
   * `complete`: the reply played to its end. Then say so in the server's own measure (the
   * server takes anything under its audio_ms for a reply cut short).
   * @param {string} id
   * @param {number} samples played, at the player's rate
   * @param {boolean} [complete]
   */
  reportPlayed(id, samples, complete = false) {
    const played = (samples / this.player.rate) * 1000;
    const received = this.receivedMs.get(id) ?? 0;
    this.receivedMs.delete(id);
    this.events.send({
      type: 'response.audio.played',
      response_id: id,
      played_ms: complete ? Math.ceil(Math.max(played, received)) : Math.round(played),
    });
  }
}
