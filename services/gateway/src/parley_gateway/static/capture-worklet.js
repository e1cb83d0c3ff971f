// Microphone capture: context-rate float audio -> 16 kHz mono PCM16 frames.
//
// Each render quantum is low-pass filtered just below the target Nyquist
// frequency (8th-order Butterworth, so decimating does not fold the 8-24 kHz
// band back into speech), then linearly interpolated onto the target sample
// grid. The filter state, the fractional read position and the last input
// sample carry over between process() calls, so the output stream is
// continuous for any input rate (48000, 44100, ...).
//
// Frames of `frameSize` samples are posted as {pcm: Int16Array, level} with
// the buffer transferred; `level` is the frame's RMS (0..1) for the meter.
// A "flush" message posts the partial frame at once as {pcm, level, flushed: true}.

const BUTTERWORTH_ORDER = 8;
const CUTOFF_FRACTION = 0.45; // of the target rate: 7.2 kHz for 16 kHz

/** @typedef {{b0: number, b1: number, b2: number, a1: number, a2: number, z1: number, z2: number}} Biquad */

/**
 * One RBJ low-pass biquad, run in transposed direct form II.
 * @param {number} cutoff
 * @param {number} q
 * @param {number} rate
 * @returns {Biquad}
 */
function lowpassSection(cutoff, q, rate) {
  const w0 = (2 * Math.PI * cutoff) / rate;
  const cos = Math.cos(w0);
  const alpha = Math.sin(w0) / (2 * q);
  const a0 = 1 + alpha;
  const b1 = (1 - cos) / a0;
  return { b0: b1 / 2, b1, b2: b1 / 2, a1: (-2 * cos) / a0, a2: (1 - alpha) / a0, z1: 0, z2: 0 };
}

/**
 * A Butterworth low-pass as cascaded biquads (one per conjugate pole pair).
 * @param {number} order
 * @param {number} cutoff
 * @param {number} rate
 */
function butterworthLowpass(order, cutoff, rate) {
  const sections = [];
  for (let k = 0; k < order / 2; k++) {
    const q = 1 / (2 * Math.cos(((2 * k + 1) * Math.PI) / (2 * order)));
    sections.push(lowpassSection(cutoff, q, rate));
  }
  return sections;
}

class CaptureProcessor extends AudioWorkletProcessor {
  /** @param {AudioWorkletNodeOptions} options */
  constructor(options) {
    super();
    const { targetRate = 16000, frameSize = 1600 } = options.processorOptions ?? {};
    // `sampleRate` is the AudioWorkletGlobalScope's context rate.
    this.step = sampleRate / targetRate; // input samples per output sample
    // Only needed when decimating; upsampling has nothing to alias.
    this.sections = sampleRate > targetRate
      ? butterworthLowpass(BUTTERWORTH_ORDER, CUTOFF_FRACTION * targetRate, sampleRate)
      : [];
    this.block = new Float32Array(128); // filtered copy of the current quantum
    this.position = 0; // next output sample's position; -1 means `previous`
    this.previous = 0; // last filtered sample of the previous quantum
    this.frameSize = frameSize;
    this.frame = new Int16Array(frameSize);
    this.filled = 0;
    this.sumSquares = 0;
    this.running = true;
    // "stop": let the node be garbage-collected. "flush": post the partial
    // frame now (push-to-talk release), so the turn's last words are not held
    // back until the frame fills.
    this.port.onmessage = ({ data }) => {
      if (data === 'flush') this.flush();
      else this.running = false;
    };
  }

  // Always answers with a {flushed: true} message, even with no samples.
  flush() {
    const n = this.filled;
    const level = n ? Math.sqrt(this.sumSquares / n) : 0;
    const pcm = this.frame.slice(0, n);
    this.port.postMessage({ pcm, level, flushed: true }, [pcm.buffer]);
    this.filled = 0;
    this.sumSquares = 0;
  }

  /** @param {Float32Array[][]} inputs */
  process(inputs) {
    // Mono: the node is created with channelCount 1 / "explicit", so the
    // browser has already down-mixed the microphone. An input with no
    // channels (source disconnected) simply produces nothing.
    const input = inputs[0][0];
    if (input) this.consume(input);
    return this.running;
  }

  /** @param {Float32Array} input */
  consume(input) {
    const n = input.length;
    if (this.block.length !== n) this.block = new Float32Array(n);
    const x = this.block;
    x.set(input);

    for (let s = 0; s < this.sections.length; s++) {
      const f = this.sections[s];
      let { z1, z2 } = f;
      for (let i = 0; i < n; i++) {
        const v = x[i];
        const y = f.b0 * v + z1;
        z1 = f.b1 * v - f.a1 * y + z2;
        z2 = f.b2 * v - f.a2 * y;
        x[i] = y;
      }
      f.z1 = z1;
      f.z2 = z2;
    }

    // Linear interpolation between x[i] and x[i + 1] (x[-1] = previous).
    // `t < n - 1` guarantees x[i + 1] exists; the remainder carries over.
    let t = this.position;
    while (t < n - 1) {
      const i = Math.floor(t);
      const a = i < 0 ? this.previous : x[i];
      this.emit(a + (x[i + 1] - a) * (t - i));
      t += this.step;
    }
    this.position = t - n;
    this.previous = x[n - 1];
  }

  /**
   * Int16Array is platform-endian; every platform browsers run on is
   * little-endian, which is the wire format.
   * @param {number} sample
   */
  emit(sample) {
    const v = Math.max(-1, Math.min(1, sample));
    this.frame[this.filled++] = Math.round(v < 0 ? v * 0x8000 : v * 0x7fff);
    this.sumSquares += v * v;
    if (this.filled === this.frameSize) {
      const level = Math.sqrt(this.sumSquares / this.frameSize);
      this.port.postMessage({ pcm: this.frame, level }, [this.frame.buffer]);
      this.frame = new Int16Array(this.frameSize);
      this.filled = 0;
      this.sumSquares = 0;
    }
  }
}

registerProcessor('capture-processor', CaptureProcessor);
