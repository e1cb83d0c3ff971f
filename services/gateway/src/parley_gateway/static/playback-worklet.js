// Reply playback: a FIFO of context-rate Float32 chunks played back to back. The page asks
// the server for audio at the context's rate, so nothing here (or before) resamples. One node
// serves one connection.
//
// Messages in (main thread -> worklet):
//   {type: 'push', id, samples}  queue a chunk of response `id` (at the context rate)
//   {type: 'end', id}            response `id` has no more audio; reported once it has played out
//   {type: 'flush'}              drop everything queued now (a few-ms fade avoids a click)
//   {type: 'close'}              the connection is over: stop, and let the node be collected
// Messages out:
//   {type: 'started', id}          the first sample of response `id` is being played now
//   {type: 'ended', id, played}    all of `id` has been played; `played` = its samples played
//   {type: 'flushed', id, played}  after a flush: the response that was playing (or null)
//                                  and how many of its samples were played
//
// A small jitter buffer (prebufferMs) is filled before a response starts and
// again after an underrun, so network jitter does not chop the audio into
// tiny bursts. process() never allocates and posts only on started/ended/flush.

/**
 * A chunk of a response's audio, or (samples null) the mark of its end.
 * @typedef {{id: string, samples: Float32Array | null}} QueueItem
 */

class PlaybackProcessor extends AudioWorkletProcessor {
  /** @param {AudioWorkletNodeOptions} options */
  constructor(options) {
    super();
    const { prebufferMs = 60, fadeMs = 5 } = options.processorOptions ?? {};
    this.prebuffer = Math.round((prebufferMs / 1000) * sampleRate);
    /** @type {QueueItem[]} */
    this.queue = []; // {id, samples: Float32Array} chunks and {id, samples: null} end markers
    this.offset = 0; // read position inside queue[0].samples
    this.queuedSamples = 0;
    this.queuedMarkers = 0;
    this.buffering = true;
    /** @type {string | null} */
    this.currentId = null; // response whose samples are being played
    this.played = 0; // samples of currentId played so far
    this.fade = new Float32Array(Math.round((fadeMs / 1000) * sampleRate));
    this.fadeLength = 0;
    this.fadePosition = 0;
    this.running = true;
    this.port.onmessage = (event) => this.onMessage(event.data);
  }

  /**
   * @param {{type: 'push', id: string, samples: Float32Array}
   *   | {type: 'end', id: string} | {type: 'flush'} | {type: 'close'}} message
   */
  onMessage(message) {
    switch (message.type) {
      case 'push':
        this.queue.push({ id: message.id, samples: message.samples });
        this.queuedSamples += message.samples.length;
        break;
      case 'end':
        this.queue.push({ id: message.id, samples: null });
        this.queuedMarkers++;
        break;
      case 'flush':
        this.flush();
        break;
      case 'close':
        this.running = false;
        break;
    }
  }

  flush() {
    this.port.postMessage({ type: 'flushed', id: this.currentId, played: this.played });
    // Keep the next few ms of what was playing, faded to zero, so the cut
    // does not click; then drop the rest.
    if (!this.buffering) {
      let n = 0;
      let offset = this.offset;
      for (const item of this.queue) {
        if (!item.samples) continue;
        while (offset < item.samples.length && n < this.fade.length) {
          this.fade[n] = item.samples[offset++] * (1 - n / this.fade.length);
          n++;
        }
        offset = 0;
        if (n === this.fade.length) break;
      }
      this.fadeLength = n;
      this.fadePosition = 0;
    }
    this.queue.length = 0;
    this.offset = 0;
    this.queuedSamples = 0;
    this.queuedMarkers = 0;
    this.buffering = true;
    this.currentId = null;
    this.played = 0;
  }

  /**
   * @param {Float32Array[][]} _inputs
   * @param {Float32Array[][]} outputs
   */
  process(_inputs, outputs) {
    const out = outputs[0][0];
    let i = 0;

    while (this.fadePosition < this.fadeLength && i < out.length) {
      out[i++] = this.fade[this.fadePosition++];
    }

    // Start once enough is buffered, or at once if the end of a response is
    // already queued (nothing more is coming to wait for).
    if (this.buffering && (this.queuedSamples >= this.prebuffer || this.queuedMarkers > 0)) {
      this.buffering = false;
    }

    while (i < out.length && !this.buffering) {
      const item = this.queue[0];
      if (!item) {
        this.buffering = true; // underrun (or simply done): refill before playing again
        break;
      }
      if (!item.samples) {
        const played = item.id === this.currentId ? this.played : 0;
        this.port.postMessage({ type: 'ended', id: item.id, played });
        if (item.id === this.currentId) this.currentId = null;
        this.queue.shift();
        this.queuedMarkers--;
        continue;
      }
      if (item.id !== this.currentId) {
        this.currentId = item.id;
        this.played = 0;
        this.port.postMessage({ type: 'started', id: item.id });
      }
      const samples = item.samples;
      const n = Math.min(out.length - i, samples.length - this.offset);
      for (let k = 0; k < n; k++) out[i + k] = samples[this.offset + k];
      i += n;
      this.offset += n;
      this.played += n;
      this.queuedSamples -= n;
      if (this.offset === samples.length) {
        this.queue.shift();
        this.offset = 0;
      }
    }

    out.fill(0, i);
    return this.running; // until its connection is over
  }
}

registerProcessor('playback-processor', PlaybackProcessor);
