// The small client every page uses: JSON and form requests to the gateway's HTTP API
// (relative URLs, so it works behind any proxy path), with its errors made readable.

export class ApiError extends Error {
  constructor(status, message, code) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

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

/** Fetch; throws ApiError with the server's message unless the answer is 2xx. */
export async function request(path, options = {}) {
  const init = { ...options };
  if (init.json !== undefined) {
    init.body = JSON.stringify(init.json);
    init.headers = { 'content-type': 'application/json', ...(init.headers ?? {}) };
    delete init.json;
  }
  const response = await fetch(path, init);
  if (!response.ok) throw await failure(response);
  return response;
}

export async function getJson(path) {
  return (await request(path)).json();
}

export async function listVoices() {
  return getJson('v1/voices');
}

/** Fill a <select> with every voice a page can use (keeping its first, "default" option). */
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

/** An element with text and attributes, for pages built in code. */
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

export function showError(target, error) {
  target.textContent = error instanceof ApiError || error instanceof Error ? error.message : String(error);
  target.hidden = false;
}
