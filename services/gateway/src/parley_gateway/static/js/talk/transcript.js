// The conversation as the page shows it: the user's turns (the one in progress with its
// tentative words), the replies as their words arrive, what was cut from a reply that was not
// heard to its end, timings, and notes about the conversation itself.
//
// `Transcript` is the page's view, which outlives connections (a resumed conversation goes on
// in it); `Turns` is one connection's bookkeeping of the messages it is filling in.

const RECENT_RESPONSES = 20; // replies kept addressable for late events

/**
 * A reply on screen: its element, the text node its words go into.
 * @typedef {{el: HTMLParagraphElement, text: Text, done: boolean}} ReplyEntry
 */

export class Transcript {
  /** @param {HTMLElement} element */
  constructor(element) {
    this.element = element;
  }

  /**
   * Apply a change, following the bottom if the reader was there.
   * @param {() => void} change
   */
  update(change) {
    const t = this.element;
    const atBottom = t.scrollHeight - t.scrollTop - t.clientHeight < 24;
    change();
    if (atBottom) t.scrollTop = t.scrollHeight;
  }

  /**
   * @param {'user' | 'assistant'} role
   * @param {string} text
   * @param {string | null} sessionId the conversation it is part of
   */
  addMessage(role, text, sessionId) {
    const el = document.createElement('p');
    el.className = `message ${role}`;
    el.dataset.testid = `${role}-message`;
    if (sessionId) el.dataset.session = sessionId;
    el.textContent = text;
    this.update(() => this.element.append(el));
    return el;
  }

  /**
   * A line about the conversation itself (resumed, new, audio lost).
   * @param {string} text
   */
  addNote(text) {
    const el = document.createElement('p');
    el.className = 'note';
    el.dataset.testid = 'transcript-note';
    el.textContent = text;
    this.update(() => this.element.append(el));
  }

  hasMessages() {
    return this.element.querySelector('.message') !== null;
  }

  /** @param {boolean} busy a reply is on its way */
  setBusy(busy) {
    if (busy) this.element.setAttribute('aria-busy', 'true');
    else this.element.removeAttribute('aria-busy');
  }

  /**
   * A resumed session's history, on screen: the turns this page already shows stay as they are
   * (with their timings and marks), and only the ones it lacks are added: all of them after a
   * reload, else those that ended while the page was away. A reply the server kept only in part
   * (the connection dropped while it played) is marked as cut where the server cut it.
   * @param {string} sessionId
   * @param {any[]} history as the server sent it
   */
  showHistory(sessionId, history) {
    /** @type {{role: 'user' | 'assistant', content: string}[]} */
    const turns = history.filter((t) => (t?.role === 'user' || t?.role === 'assistant') && typeof t.content === 'string');
    let next = 0; // turns[next:] are not on screen
    for (const el of /** @type {NodeListOf<HTMLElement>} */ (this.element.querySelectorAll('.message[data-session]'))) {
      if (el.dataset.session !== sessionId || el.classList.contains('partial')) continue;
      const role = el.classList.contains('user') ? 'user' : 'assistant';
      const shown = normWords(shownText(el));
      for (let q = next; q < turns.length; q++) {
        const kept = normWords(turns[q].content);
        // A turn the server kept empty (a reply cut before a word was heard) has nothing to match.
        if (turns[q].role !== role || kept.length === 0 || !isPrefix(kept, shown)) continue;
        if (role === 'assistant' && kept.length < shown.length) this.markCut(el, turns[q].content);
        next = q + 1;
        break;
      }
    }
    for (const turn of turns.slice(next)) {
      const text = turn.content.trim();
      if (!text) continue;
      this.addMessage(turn.role, text, sessionId).dataset.restored = 'true';
    }
  }

  /**
   * Strike out the part of a reply after `heard`, what the server kept of it.
   * @param {HTMLElement} el
   * @param {string} heard
   */
  markCut(el, heard) {
    const text = el.firstChild; // a reply's message starts with its text node
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
    this.update(() => el.append(note));
  }
}

/** One connection's messages in progress: the user's partial turn, and the replies it can still change. */
export class Turns {
  /**
   * @param {Transcript} transcript
   * @param {() => string | null} sessionId the conversation new messages are part of
   */
  constructor(transcript, sessionId) {
    this.transcript = transcript;
    this.sessionId = sessionId;
    /** @type {HTMLParagraphElement | null} */
    this.partial = null; // the user's turn in progress
    // response_id -> entry; finished ones are kept (the most recent few) because
    // response.cancelled / response.truncated can follow response.done.
    /** @type {Map<string, ReplyEntry>} */
    this.replies = new Map();
  }

  /**
   * A typed turn (the server does not echo those as transcripts).
   * @param {string} text
   */
  addTyped(text) {
    this.transcript.addMessage('user', text, this.sessionId());
  }

  /**
   * The user's turn in progress: the stable words as usual, the rest still tentative.
   * @param {string} text
   * @param {string} stable
   */
  showPartial(text, stable) {
    if (!this.partial) {
      this.partial = this.transcript.addMessage('user', '', this.sessionId());
      this.partial.classList.add('partial');
    }
    const [settled, tentative] = splitWords(text, stable);
    const a = document.createElement('span');
    a.className = 'stable';
    a.textContent = settled;
    const b = document.createElement('span');
    b.className = 'tentative';
    b.textContent = tentative;
    const partial = this.partial;
    this.transcript.update(() => partial.replaceChildren(a, b));
  }

  /**
   * @param {string} text
   * @param {string} [language]
   */
  finishUserTurn(text, language) {
    const el = this.partial;
    this.partial = null;
    if (!text) {
      el?.remove();
      return;
    }
    const message = el ?? this.transcript.addMessage('user', '', this.sessionId());
    message.classList.remove('partial');
    if (language) {
      message.dataset.language = language;
      message.title = `Language: ${language}`;
    }
    this.transcript.update(() => (message.textContent = text));
  }

  /** The connection is over: a turn in progress will never finish. */
  drop() {
    this.partial?.remove();
    this.partial = null;
    this.transcript.setBusy(false);
  }

  /**
   * @param {string} responseId
   * @returns {ReplyEntry}
   */
  reply(responseId) {
    let entry = this.replies.get(responseId);
    if (!entry) {
      const el = this.transcript.addMessage('assistant', '', this.sessionId());
      const text = document.createTextNode('');
      el.append(text);
      entry = { el, text, done: false };
      this.replies.set(responseId, entry);
      for (const [id, old] of this.replies) {
        if (this.replies.size <= RECENT_RESPONSES) break;
        if (old.done) this.replies.delete(id);
      }
    }
    return entry;
  }

  /**
   * @param {string} responseId
   * @param {string} delta
   */
  appendText(responseId, delta) {
    const { text } = this.reply(responseId);
    // The first delta often starts with a space; pre-wrap would show it.
    const words = text.length === 0 ? delta.trimStart() : delta;
    this.transcript.update(() => text.appendData(words));
  }

  /**
   * @param {string} responseId
   * @param {Record<string, unknown>} [timings] response.done's
   * @param {unknown} [similarity] response.done's speaker_similarity
   */
  finishReply(responseId, timings, similarity) {
    const entry = this.replies.get(responseId);
    if (!entry || entry.done) return;
    entry.done = true;
    if (![...this.replies.values()].some((e) => !e.done)) this.transcript.setBusy(false);
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
    this.transcript.update(() => entry.el.after(el));
  }

  /**
   * Cancelled: marked as interrupted unless it had finished.
   * @param {string} responseId
   */
  cancelReply(responseId) {
    const entry = this.replies.get(responseId);
    if (entry && !entry.done) entry.el.classList.add('interrupted');
    this.finishReply(responseId);
  }

  /**
   * The server cut this reply in its history to what was heard (`heard`). Keep the full text,
   * but strike out the tail that was never played.
   * @param {string} responseId
   * @param {string} heard
   */
  showTruncated(responseId, heard) {
    const entry = this.replies.get(responseId);
    if (entry) this.transcript.markCut(entry.el, heard);
  }
}

/**
 * What a message says (for a reply: all of it, heard or not).
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
 * Cut `text` after as many words as `prefix` has: [head, tail]. `prefix` is the server's
 * word-normalised version of text's start (single spaces).
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
