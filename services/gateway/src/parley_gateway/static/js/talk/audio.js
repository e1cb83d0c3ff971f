// The talk page's AudioContext, made on the first Connect (browsers start audio only after a
// user gesture) and kept while the page is mounted; and the worklets it runs, where the
// browser has them (AudioWorklet needs a secure context: HTTPS or localhost).

export class PageAudio {
  /** Call inside the click that starts audio. */
  constructor() {
    this.ctx = new AudioContext({ latencyHint: 'interactive' });
    // Undefined outside a secure context, whatever the type says.
    this.worklets = /** @type {AudioWorklet | undefined} */ (this.ctx.audioWorklet) !== undefined;
    /** Settles once the worklets have loaded (at once without them); rejects if they cannot. */
    this.ready = this.worklets
      ? Promise.all([
          this.ctx.audioWorklet.addModule('static/capture-worklet.js'),
          this.ctx.audioWorklet.addModule('static/playback-worklet.js'),
        ]).then(() => undefined)
      : Promise.resolve();
  }

  /** The rate the page plays at: the one it asks the server to speak at. */
  get rate() {
    return this.ctx.sampleRate;
  }

  close() {
    this.ctx.close().catch(() => {});
  }
}
