// The small client every page uses: JSON and form requests to the gateway's HTTP API
// (relative URLs, so it works behind any proxy path), with its errors made readable.

export class ApiError extends Error {
  /**
   * @param {number} status
   * @param {string} message
   * @param {string} code
   */
  constructor(status, message, code) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/** @param {Response} response */
async function failure(response) {
  let message = `${response.status} ${response.statusText}`;
  let code = '';
  try {
    const body = await response.json();
    message = body.error?.message ?? body.detail ?? message;
    code = body.error?.code ?? '';
  } catch {
    // not JSON: keep the status line
  }
  return new ApiError(response.status, message, code);
}

// ---- access: the API key (asked for, held in memory) and the short-lived tokens minted from it ----
//
// The long-lived key never goes to storage: it is exchanged (POST v1/auth/token) for a token that
// expires, and only the token is kept, in sessionStorage, so a reload of the tab goes on with it.
// Once the token expires or is refused, the key mints another if this page load still holds it;
// otherwise the user is asked for the key again. Every request carries the token, in the
// Authorization header or, where a browser cannot set one (WebSocket, EventSource, media), as `?token=`.

const OLD_KEY_STORE = 'parley.api_key'; // where earlier versions of the page kept the key itself
const TOKEN_STORE = 'parley.token'; // sessionStorage: {value, until} (ms since the epoch)
const RENEW_BEFORE_MS = 60_000; // a token this close to its expiry is renewed before use

/**
 * The credentials of this page load (the pages share them, as they share a login).
 * @type {{key: string, asking: Promise<void> | null}}
 */
const access = { key: '', asking: null };

try {
  localStorage.removeItem(OLD_KEY_STORE);
} catch {
  // storage unavailable: nothing was kept there either
}

/** @returns {{value: string, until: number} | null} */
function storedToken() {
  try {
    const saved = JSON.parse(sessionStorage.getItem(TOKEN_STORE) ?? 'null');
    if (typeof saved?.value === 'string' && typeof saved?.until === 'number') return saved;
  } catch {
    // unavailable or garbled: as if there were none
  }
  return null;
}

/** @param {{value: string, until: number} | null} token */
function keepToken(token) {
  try {
    if (token) sessionStorage.setItem(TOKEN_STORE, JSON.stringify(token));
    else sessionStorage.removeItem(TOKEN_STORE);
  } catch {
    // not kept: the next page load asks for the key again
  }
}

/**
 * Headers that carry the token, when there is one.
 * @returns {Record<string, string>}
 */
export function authHeaders() {
  const token = storedToken();
  return token ? { authorization: `Bearer ${token.value}` } : {};
}

/** Ask the user for the key (a modal dialog); resolves once one was entered. */
function askKey() {
  access.asking ??= new Promise(/** @param {() => void} resolve */ (resolve) => {
    const dialog = /** @type {HTMLDialogElement} */ (document.getElementById('key-dialog'));
    const input = /** @type {HTMLInputElement} */ (document.getElementById('key-input'));
    dialog.addEventListener(
      'close',
      () => {
        access.key = input.value.trim();
        input.value = ''; // the field would otherwise hold it for as long as the page lives
        access.asking = null;
        resolve();
      },
      { once: true },
    );
    dialog.showModal();
  });
  return access.asking;
}

/**
 * A fresh token from the key in memory, kept; false if the key was refused (or there is none).
 * @returns {Promise<boolean>}
 */
async function mintToken() {
  if (!access.key) return false;
  const response = await fetch('v1/auth/token', { method: 'POST', headers: { authorization: `Bearer ${access.key}` } });
  if (response.status === 401) {
    access.key = ''; // a wrong key: ask again
    return false;
  }
  if (!response.ok) throw await failure(response);
  const minted = await response.json();
  keepToken(minted.required ? { value: minted.token, until: Date.now() + minted.expires_in * 1000 } : null);
  return true;
}

/** After a 401: a new token from the key in memory, or else from one the user is asked for. */
async function renewAccess() {
  keepToken(null);
  if (await mintToken()) return;
  await askKey();
  await mintToken();
}

/**
 * A token good for a while yet, where the server needs one: kept, from the key in memory, or
 * from one the user is asked for. Without a token or a key, asks the server whether it needs one.
 */
async function freshToken() {
  const token = storedToken();
  if (token && token.until >= Date.now() + RENEW_BEFORE_MS) return;
  if (await mintToken()) return;
  const probe = await fetch('v1/auth/token', { method: 'POST' });
  if (probe.ok && !(await probe.json()).required) {
    keepToken(null); // an open server
    return;
  }
  await renewAccess();
}

/**
 * `url` with a fresh `?token=` when the server needs one (for WebSockets, EventSource, media).
 * @param {string} url
 * @returns {Promise<string>}
 */
export async function withToken(url) {
  await freshToken();
  const token = storedToken();
  if (!token) return url;
  return `${url}${url.includes('?') ? '&' : '?'}token=${encodeURIComponent(token.value)}`;
}

/**
 * What request() takes: fetch's options, and `json`, a body to send as JSON.
 * @typedef {Omit<RequestInit, 'headers'> & {json?: unknown, headers?: Record<string, string>}} RequestOptions
 */

/**
 * Fetch; throws ApiError with the server's message unless the answer is 2xx. Asks for the key on a 401.
 * @param {string} path
 * @param {RequestOptions} [options]
 * @returns {Promise<Response>}
 */
export async function request(path, options = {}) {
  const init = { ...options };
  if (init.json !== undefined) {
    init.body = JSON.stringify(init.json);
    init.headers = { 'content-type': 'application/json', ...(init.headers ?? {}) };
    delete init.json;
  }
  for (let attempt = 0; ; attempt += 1) {
    const response = await fetch(path, { ...init, headers: { ...(init.headers ?? {}), ...authHeaders() } });
    if (response.status === 401 && attempt < 3) {
      await renewAccess();
      continue;
    }
    // Over the per-client rate: wait as told (a few seconds at most) and try again.
    const wait = Number(response.headers.get('retry-after'));
    if (response.status === 429 && attempt < 3 && wait > 0 && wait <= 10) {
      await new Promise((resolve) => setTimeout(resolve, wait * 1000));
      continue;
    }
    if (!response.ok) throw await failure(response);
    return response;
  }
}

/**
 * @param {string} path
 * @returns {Promise<any>} the answer's JSON
 */
export async function getJson(path) {
  return (await request(path)).json();
}

/**
 * A voice as /v1/voices lists it: built in, or stored (cloned) from a reference recording.
 * @typedef {{id: string, name: string, language: string, engines: string[]}
 *   & ({cloned: false, reference_duration_s: null} | {cloned: true, reference_duration_s: number})} Voice
 */

/** @returns {Promise<{voices: Voice[], cloning_available: boolean}>} */
export async function listVoices() {
  return getJson('v1/voices');
}

/**
 * Fill a <select> with every voice a page can use (keeping its first, "default" option).
 * @param {HTMLSelectElement} select
 * @param {Voice[]} voices
 * @param {{clonedUsableOnly?: boolean}} [options]
 */
export function fillVoiceSelect(select, voices, { clonedUsableOnly = true } = {}) {
  const keep = select.options[0];
  select.replaceChildren(keep);
  for (const voice of voices) {
    const option = new Option(`${voice.name}${voice.cloned ? ' (cloned)' : ''}`, voice.id);
    if (clonedUsableOnly && voice.cloned && voice.engines.length === 0) {
      option.disabled = true;
      option.textContent += ' — needs FireRedTTS2';
    }
    select.append(option);
  }
}

/**
 * An element with text and attributes, for pages built in code.
 * @template {keyof HTMLElementTagNameMap} K
 * @param {K} tag
 * @param {Record<string, any>} [attributes]
 * @param {...(Node | string)} children
 * @returns {HTMLElementTagNameMap[K]}
 */
export function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (key === 'dataset') Object.assign(node.dataset, value);
    else if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
    else if (value === true) node.setAttribute(key, '');
    else if (value !== false && value !== undefined && value !== null) node.setAttribute(key, value);
  }
  node.append(...children);
  return node;
}

/**
 * @param {HTMLElement} target
 * @param {unknown} error
 */
export function showError(target, error) {
  target.textContent = error instanceof ApiError || error instanceof Error ? error.message : String(error);
  target.hidden = false;
}
