// One WebSocket to /v1/conversation: JSON events both ways, reply audio in, microphone audio
// out. If the link is too slow for the microphone, frames are dropped rather than let the
// socket's buffer (and the latency) grow without bound, and the page is told while it lasts.

// Backed up beyond the first mark: drop frames; below the second again: send again.
const MAX_BUFFERED_BYTES = 256 * 1024;
const RESUME_BUFFERED_BYTES = 64 * 1024;

/**
 * A server event (docs/protocol.md), as parsed from its JSON text frame.
 * @typedef {{type: string, [field: string]: any}} ServerEvent
 */
/**
 * What a connection tells its owner.
 * @typedef {object} ConnectionEvents
 * @property {() => void} open
 * @property {(message: ServerEvent) => void} event
 * @property {(buffer: ArrayBuffer) => void} audio a binary frame: reply audio
 * @property {(problem: string) => void} garbled a text frame that is not JSON
 * @property {(event: CloseEvent) => void} closed it closed by itself (not by close())
 * @property {(stalled: boolean, droppedMs: number) => void} stalled microphone audio started or
 *   stopped being dropped; `droppedMs`, once it stops: how much was
 */

export class Connection {
  /**
   * @param {string} url
   * @param {ConnectionEvents} events
   */
  constructor(url, events) {
    this.events = events;
    this.stalled = false;
    this.droppedMs = 0;
    this.ws = new WebSocket(url);
    this.ws.binaryType = 'arraybuffer';
    this.ws.onopen = () => events.open();
    this.ws.onmessage = (event) => {
      if (typeof event.data !== 'string') {
        events.audio(event.data);
        return;
      }
      let message;
      try {
        message = JSON.parse(event.data);
      } catch {
        events.garbled('Received a text frame that is not JSON');
        return;
      }
      events.event(message);
    };
    // 'error' carries no detail and is always followed by 'close'.
    this.ws.onclose = (event) => events.closed(event);
  }

  get open() {
    return this.ws.readyState === WebSocket.OPEN;
  }

  /** @param {object} message */
  send(message) {
    if (this.open) this.ws.send(JSON.stringify(message));
  }

  /**
   * Microphone audio, unless the link is backed up.
   * @param {Int16Array<ArrayBuffer>} pcm
   * @param {number} ms how much audio it is
   */
  sendAudio(pcm, ms) {
    if (!this.open) return;
    const buffered = this.ws.bufferedAmount;
    if (!this.stalled && buffered > MAX_BUFFERED_BYTES) {
      this.stalled = true;
      this.droppedMs = 0;
      this.events.stalled(true, 0);
    } else if (this.stalled && buffered < RESUME_BUFFERED_BYTES) {
      this.stalled = false;
      this.events.stalled(false, this.droppedMs);
    }
    if (this.stalled) this.droppedMs += ms;
    else this.ws.send(pcm);
  }

  /** Close it cleanly; nothing more is heard from it. */
  close() {
    this.ws.onopen = this.ws.onmessage = this.ws.onclose = null;
    if (this.ws.readyState === WebSocket.CONNECTING || this.ws.readyState === WebSocket.OPEN) this.ws.close(1000);
  }
}
