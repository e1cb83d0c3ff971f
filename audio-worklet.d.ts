// The AudioWorkletGlobalScope, which TypeScript's DOM library leaves out: what the page's
// capture-worklet.js and playback-worklet.js use (type checks only; ESLint limits these
// names to the worklet files).

interface AudioWorkletProcessorImpl extends AudioWorkletProcessor {
  process(inputs: Float32Array[][], outputs: Float32Array[][], parameters: Record<string, Float32Array>): boolean;
}

declare class AudioWorkletProcessor {
  constructor(options?: AudioWorkletNodeOptions);
  readonly port: MessagePort;
}

declare function registerProcessor(
  name: string,
  processorCtor: new (options: AudioWorkletNodeOptions) => AudioWorkletProcessorImpl,
): void;

declare const sampleRate: number;
declare const currentTime: number;
declare const currentFrame: number;
