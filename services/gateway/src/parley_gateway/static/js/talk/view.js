// The talk page's elements: built into its section, and the states its controls show
// (connection status, microphone level, the talk button held).

import { el } from '../api.js';

const METER_FLOOR_DB = -60;

/**
 * The talk page's controls, as buildView() made them.
 * @typedef {object} TalkView
 * @property {HTMLElement} page the page's own section (its data attributes are the page's record)
 * @property {HTMLButtonElement} connect
 * @property {HTMLElement} status
 * @property {HTMLSelectElement} mode
 * @property {HTMLSelectElement} voice
 * @property {HTMLTextAreaElement} systemPrompt
 * @property {HTMLElement} meter
 * @property {HTMLElement} meterFill
 * @property {HTMLButtonElement} ptt
 * @property {HTMLElement} pttLabel
 * @property {HTMLElement} micNote why there is no microphone, when there is none
 * @property {HTMLUListElement} errors
 * @property {HTMLElement} transcript
 * @property {HTMLFormElement} composer
 * @property {HTMLInputElement} textInput
 * @property {HTMLButtonElement} send
 * @property {HTMLButtonElement} stop
 */

/**
 * @param {HTMLElement} root the page's section
 * @returns {TalkView}
 */
export function buildView(root) {
  const view = {
    page: root,
    status: el('span', { id: 'status', class: 'status', 'data-testid': 'status', 'data-state': 'idle', role: 'status' },
      'Disconnected'),
    mode: el('select', { id: 'mode', class: 'mode', 'data-testid': 'mode', title: 'How your turn ends' },
      new Option('Hands-free', 'vad'), new Option('Push to talk', 'push_to_talk')),
    connect: el('button', { id: 'connect', class: 'connect', type: 'button', 'data-testid': 'connect' }, 'Connect'),
    voice: el('select', { id: 'voice-select', 'data-testid': 'voice-select' }, new Option('Default voice', '')),
    systemPrompt: el('textarea', { id: 'system-prompt', 'data-testid': 'system-prompt', rows: '2',
      placeholder: 'You are a friendly assistant who answers briefly.' }),
    meterFill: el('div', { id: 'meter-fill', class: 'meter-fill' }),
    pttLabel: el('span', { id: 'ptt-label' }, 'Hold to talk'),
    micNote: el('p', { class: 'notice', 'data-testid': 'mic-note', role: 'note', hidden: true }),
    errors: el('ul', { id: 'errors', class: 'errors', 'data-testid': 'errors', 'aria-live': 'assertive',
      'aria-label': 'Errors' }),
    transcript: el('section', { id: 'transcript', class: 'transcript', 'data-testid': 'transcript', role: 'log',
      'aria-label': 'Conversation' }),
    textInput: el('input', { id: 'text-input', type: 'text', 'data-testid': 'text-input',
      placeholder: 'Type a message…', autocomplete: 'off', disabled: true }),
    send: el('button', { id: 'send', type: 'submit', 'data-testid': 'send', disabled: true }, 'Send'),
    stop: el('button', { id: 'stop', type: 'button', 'data-testid': 'stop', disabled: true }, 'Stop'),
  };
  const meter = el('div', { id: 'meter', class: 'meter', role: 'meter', 'aria-label': 'Microphone level',
    'aria-valuemin': '0', 'aria-valuemax': '100', 'aria-valuenow': '0' }, view.meterFill);
  const ptt = el('button', { id: 'ptt', class: 'ptt', type: 'button', 'data-testid': 'ptt', 'aria-pressed': 'false',
    'aria-keyshortcuts': 'Space', hidden: true, disabled: true }, view.pttLabel, ' ', el('kbd', {}, 'Space'));
  const composer = el('form', { id: 'composer', class: 'composer' },
    el('label', { for: 'text-input', class: 'visually-hidden' }, 'Message'), view.textInput, view.send, view.stop);
  root.append(
    el('header', { class: 'bar' },
      el('h1', {}, 'Parley'), view.status,
      el('label', { for: 'mode', class: 'visually-hidden' }, 'Turn taking'), view.mode, view.connect),
    el('details', { class: 'settings' },
      el('summary', {}, 'Voice and personality'),
      el('label', { for: 'voice-select' }, 'Voice'), view.voice,
      el('label', { for: 'system-prompt' }, 'Personality (system prompt)'), view.systemPrompt),
    meter, ptt, view.micNote, view.errors, view.transcript, composer);
  return { ...view, meter, ptt, composer };
}

/**
 * @param {TalkView} view
 * @param {string} state the status's `data-state`: idle, connecting, connected, closed or error
 * @param {string} text
 */
export function setStatus(view, state, text) {
  view.status.dataset.state = state;
  view.status.textContent = text;
  const active = state === 'connecting' || state === 'connected';
  view.connect.textContent = active ? 'Disconnect' : 'Connect';
  view.connect.classList.toggle('active', active);
  const live = state === 'connected';
  view.textInput.disabled = !live;
  view.send.disabled = !live;
  view.stop.disabled = !live;
  view.ptt.disabled = !live || view.page.dataset.mic === 'unavailable';
  view.mode.disabled = active; // the mode is fixed for a connection
}

/**
 * @param {TalkView} view
 * @param {number} rms
 */
export function showLevel(view, rms) {
  const db = 20 * Math.log10(Math.max(rms, 1e-6));
  const value = Math.max(0, Math.min(1, 1 - db / METER_FLOOR_DB));
  view.meterFill.style.transform = `scaleX(${value})`;
  view.meter.setAttribute('aria-valuenow', String(Math.round(value * 100)));
}

/**
 * @param {TalkView} view
 * @param {boolean} holding
 */
export function showHolding(view, holding) {
  view.ptt.classList.toggle('holding', holding);
  view.ptt.setAttribute('aria-pressed', String(holding));
  view.pttLabel.textContent = holding ? 'Release to send' : 'Hold to talk';
  view.meter.classList.toggle('speaking', holding);
}

/**
 * Say why the page has no microphone (null: it has one, or has not asked yet).
 * @param {TalkView} view
 * @param {string | null} why
 */
export function showMicrophone(view, why) {
  view.micNote.textContent = why ?? '';
  view.micNote.hidden = why === null;
  view.meter.hidden = why !== null; // no level to show
  if (why === null) {
    if (view.page.dataset.mic === 'unavailable') delete view.page.dataset.mic;
  } else {
    view.page.dataset.mic = 'unavailable';
  }
}
