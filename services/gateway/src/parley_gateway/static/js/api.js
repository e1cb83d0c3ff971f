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

// ---- access: the API key (asked once, kept in this browser) and short-lived tokens ----------

const KEY_STORE = 'parley.api_key';
/** @type {Promise<void> | null} */
let asking = null; // one key dialog at a time, whichever page asked
/** @type {{value: string, until: number} | null} */
let token = null; // {value, until} minted from the key, for URLs that cannot carry a header

function storedKey() {
  try {
    return localStorage.getItem(KEY_STORE) || '';
  } catch {
    return '';
  }
}

/**
 * Headers that carry the key, when there is one.
 * @returns {Record<string, string>}
 */
export function authHeaders() {
  const key = storedKey();
  return key ? { authorization: `Bearer ${key}` } : {};
}

/** Ask the user for the key (a modal dialog); resolves once one was entered. */
function askKey() {
  asking ??= new Promise(/** @param {() => void} resolve */ (resolve) => {
    const dialog = /** @type {HTMLDialogElement} */ (document.getElementById('key-dialog'));
    const input = /** @type {HTMLInputElement} */ (document.getElementById('key-input'));
    dialog.addEventListener(
      'close',
      () => {
        try {
          localStorage.setItem(KEY_STORE, input.value.trim());
        } catch {
          // kept for this page only
        }
        token = null;
        asking = null;
        resolve();
      },
      { once: true },
    );
    dialog.showModal();
  });
  return asking;
}

/**
 * `url` with a fresh `?token=` when the server needs a key (for WebSockets, EventSource, media).
 * @param {string} url
 * @returns {Promise<string>}
 */
export async function withToken(url) {
  if (!storedKey()) return url;
  if (!token || token.until < Date.now() + 60_000) {
    const minted = await request('v1/auth/token', { method: 'POST' }).then((r) => r.json());
    token = { value: minted.token, until: Date.now() + minted.expires_in * 1000 };
  }
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
      await askKey();
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
