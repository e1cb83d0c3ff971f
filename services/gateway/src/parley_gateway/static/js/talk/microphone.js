// The microphone of one connection: getUserMedia -> capture worklet (16 kHz PCM16 frames of
// 100 ms, and the level for the meter). Where the browser gives the page no microphone (no
// secure context, no device, permission refused), `why` says so in words for the page.

export const INPUT_RATE = 16000;
const FRAME_SAMPLES = 1600; // 100 ms at 16 kHz

/**
 * A frame from the capture worklet (capture-worklet.js); `flushed`: the answer to flush().
 * @typedef {{pcm: Int16Array<ArrayBuffer>, level: number, flushed?: boolean}} MicFrame
 */

/**
 * Why this page cannot have a microphone at all, or null if it may ask for one.
 * @param {boolean} worklets whether the AudioContext runs worklets
 * @returns {string | null}
 */
export function microphoneBarred(worklets) {
  if (!window.isSecureContext) {
    return 'No microphone: browsers give one only to secure pages (HTTPS, or localhost), and this page ' +
      `is plain HTTP at ${location.host}. Type your messages instead, or open the page over HTTPS.`;
  }
  if (!navigator.mediaDevices?.getUserMedia || !worklets) {
    return 'No microphone: this browser does not give the page one. Type your messages instead.';
  }
  return null;
}

/**
 * The reason a getUserMedia call failed, for the page.
 * @param {unknown} error
 */
export function microphoneRefused(error) {
  const name = error instanceof DOMException ? error.name : '';
  const why = name === 'NotAllowedError' ? 'the browser (or you) did not allow it'
    : name === 'NotFoundError' ? 'none was found'
    : name === 'NotReadableError' ? 'it is in use elsewhere, or failed'
    : String(/** @type {Error} */ (error)?.message ?? error);
  return `No microphone: ${why}. Type your messages instead, or connect again to retry.`;
}

export class Microphone {
  /**
   * Ask for the microphone (the browser may prompt); rejects with getUserMedia's error.
   * @param {AudioContext} ctx with capture-worklet.js loaded
   * @param {(frame: MicFrame) => void} onFrame
   * @returns {Promise<Microphone>}
   */
  static async open(ctx, onFrame) {
    const stream = await navigator.mediaDevices.getUserMedia({
      audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true, channelCount: 1 },
    });
    return new Microphone(ctx, stream, onFrame);
  }

  /**
   * @param {AudioContext} ctx
   * @param {MediaStream} stream
   * @param {(frame: MicFrame) => void} onFrame
   */
  constructor(ctx, stream, onFrame) {
    this.stream = stream;
    this.source = ctx.createMediaStreamSource(stream);
    this.capture = new AudioWorkletNode(ctx, 'capture-processor', {
      numberOfInputs: 1,
      numberOfOutputs: 0,
      channelCount: 1,
      channelCountMode: 'explicit',
      channelInterpretation: 'speakers',
      processorOptions: { targetRate: INPUT_RATE, frameSize: FRAME_SAMPLES },
    });
    this.capture.port.onmessage = (event) => onFrame(event.data);
    this.source.connect(this.capture);
  }

  /** Post the partial frame now (the end of a push-to-talk turn), as a `flushed` frame. */
  flush() {
    this.capture.port.postMessage('flush');
  }

  close() {
    this.capture.port.onmessage = null;
    this.capture.port.postMessage('stop');
    this.capture.disconnect();
    this.source.disconnect();
    this.stream.getTracks().forEach((track) => track.stop());
  }
}
