// What the talk page remembers: the turn-taking mode (localStorage, for every visit) and the
// conversation this tab talks in (sessionStorage, so a reload of the tab resumes it).

const MODE_KEY = 'parley.turn_detection';
const CONVERSATION_KEY = 'parley.conversation'; // {id, token} of this tab's conversation

/**
 * A conversation on the server: what resumes it.
 * @typedef {{id: string, token: string}} Conversation
 */

/** @returns {'vad' | 'push_to_talk' | null} */
export function savedMode() {
  try {
    const saved = localStorage.getItem(MODE_KEY);
    if (saved === 'vad' || saved === 'push_to_talk') return saved;
  } catch {
    // storage unavailable: the default
  }
  return null;
}

/** @param {string} mode */
export function saveMode(mode) {
  try {
    localStorage.setItem(MODE_KEY, mode);
  } catch {
    // not remembered; harmless
  }
}

/** @returns {Conversation | null} */
export function savedConversation() {
  try {
    const saved = JSON.parse(sessionStorage.getItem(CONVERSATION_KEY) ?? 'null');
    if (typeof saved?.id === 'string' && typeof saved?.token === 'string') return { id: saved.id, token: saved.token };
  } catch {
    // storage unavailable or garbled: start afresh
  }
  return null;
}

/** @param {Conversation | null} value */
export function saveConversation(value) {
  try {
    if (value) sessionStorage.setItem(CONVERSATION_KEY, JSON.stringify(value));
    else sessionStorage.removeItem(CONVERSATION_KEY);
  } catch {
    // kept for this page's life only
  }
}
