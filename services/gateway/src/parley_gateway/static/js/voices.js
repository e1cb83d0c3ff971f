// Voice studio: the voices the TTS service has, and new (cloned) voices made from a recording.
//
// An upload or a recording is checked here first (length, level, clipping, decoded by the
// browser) so the user sees what is wrong before saving; the server checks it again.

import { el, request, showError } from './api.js';
/** @import { Voice } from './api.js' */

const MIN_S = 3;
const MAX_S = 30;
const CLIP_SHARE = 0.001;
const QUIET_DBFS = -45;

/** @typedef {Blob & {name?: string}} NamedBlob a File, or a recording given a name */

/** @param {HTMLElement} root */
export async function mount(root) {
  const banner = el('p', { class: 'notice', 'data-testid': 'cloning-notice', hidden: true },
    'No running engine can clone voices here (Piper only). Voices you save are stored for every ' +
    'instance, and are spoken once a FireRedTTS2 engine runs (on a GPU).');
  const list = el('table', { 'data-testid': 'voice-list', class: 'voices' },
    el('thead', {}, el('tr', {}, el('th', {}, 'Name'), el('th', {}, 'Id'), el('th', {}, 'Kind'),
      el('th', {}, 'Engines'), el('th', {}, 'Actions'))),
    el('tbody'));
  const file = el('input', { id: 'voice-file', type: 'file', accept: 'audio/*,.wav,.mp3,.ogg,.webm,.flac,.m4a',
    'data-testid': 'voice-file' });
  const record = el('button', { type: 'button', 'data-testid': 'voice-record' }, 'Record');
  const name = el('input', { id: 'voice-name', required: true, maxlength: '64', 'data-testid': 'voice-name' });
  const transcript = el('textarea', { id: 'voice-transcript', rows: '2', required: true,
    'data-testid': 'voice-transcript' });
  const language = el('input', { id: 'voice-language', value: 'en', pattern: '[a-z]{2,3}', size: '3' });
  const check = el('output', { 'data-testid': 'voice-check', for: 'voice-file', 'aria-live': 'polite' });
  const save = el('button', { type: 'submit', 'data-testid': 'voice-save', disabled: true }, 'Save voice');
  const error = el('p', { class: 'error', role: 'alert', 'data-testid': 'voice-error', hidden: true });
  const preview = el('audio', { controls: true, 'data-testid': 'voice-preview', 'aria-label': 'Voice preview' });
  const form = el('form', { class: 'stack', 'aria-label': 'New voice' },
    el('h3', {}, 'New voice'),
    el('label', { for: 'voice-file' }, 'Reference recording (3–30 s of one speaker)'),
    el('div', { class: 'row' }, file, record), check,
    el('label', { for: 'voice-name' }, 'Name'), name,
    el('label', { for: 'voice-transcript' }, 'What the recording says, word for word'), transcript,
    el('label', { for: 'voice-language' }, 'Language'), language,
    save, error);
  root.append(el('h2', {}, 'Voices'), banner, list, preview, form);

  /** @type {NamedBlob | null} */
  let audio = null; // the Blob to upload, once it passed the checks

  async function refresh() {
    /** @type {{voices: Voice[], cloning_available: boolean}} */
    const { voices, cloning_available: cloning } = await request('v1/voices').then((r) => r.json());
    banner.hidden = cloning;
    const rows = voices.map((voice) => {
      const play = el('button', { type: 'button', 'aria-label': `Play ${voice.name}` }, 'Play');
      play.addEventListener('click', () => playPreview(voice));
      const actions = el('td', {}, play);
      if (voice.cloned) {
        const remove = el('button', { type: 'button', 'aria-label': `Delete ${voice.name}`,
          'data-testid': 'voice-delete' }, 'Delete');
        remove.addEventListener('click', () => removeVoice(voice));
        actions.append(remove);
      }
      return el('tr', { dataset: { voice: voice.id } }, el('td', {}, voice.name), el('td', {}, voice.id),
        el('td', {}, voice.cloned ? `cloned (${voice.reference_duration_s.toFixed(1)} s)` : 'built-in'),
        el('td', {}, voice.engines.join(', ') || 'none running'), actions);
    });
    list.tBodies[0].replaceChildren(...rows);
    root.dataset.voices = String(voices.length);
  }

  /** @param {Voice} voice */
  async function playPreview(voice) {
    error.hidden = true;
    try {
      const response = await request(`v1/voices/${encodeURIComponent(voice.id)}/preview`);
      preview.src = URL.createObjectURL(await response.blob());
      preview.play().catch(() => {});
    } catch (err) {
      showError(error, err);
    }
  }

  /** @param {Voice} voice */
  async function removeVoice(voice) {
    error.hidden = true;
    try {
      await request(`v1/voices/${encodeURIComponent(voice.id)}`, { method: 'DELETE' });
      await refresh();
    } catch (err) {
      showError(error, err);
    }
  }

  /** @param {NamedBlob} blob */
  async function checkAudio(blob) {
    audio = null;
    save.disabled = true;
    error.hidden = true;
    const verdict = await inspect(blob);
    check.textContent = verdict.text;
    check.dataset.ok = String(verdict.ok);
    if (verdict.ok) {
      audio = blob;
      save.disabled = false;
    }
  }

  file.addEventListener('change', () => {
    const files = /** @type {FileList} */ (file.files); // never null on a file input
    if (files[0]) checkAudio(files[0]);
  });
  record.addEventListener('click', () => recordVoice(record, checkAudio, error));

  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    if (!audio) return;
    error.hidden = true;
    save.disabled = true;
    const body = new FormData();
    body.append('file', audio, audio.name || 'recording.webm');
    body.append('name', name.value);
    body.append('transcript', transcript.value);
    body.append('language', language.value);
    try {
      await request('v1/voices', { method: 'POST', body });
      form.reset();
      check.textContent = '';
      audio = null;
      await refresh();
      root.dataset.saved = 'true';
    } catch (err) {
      showError(error, err);
      save.disabled = false;
    }
  });

  try {
    await refresh();
  } catch (err) {
    showError(error, err);
  }
}

/**
 * What the browser can tell of a recording: length, level, clipping (decoded by the browser itself).
 * @param {Blob} blob
 * @returns {Promise<{ok: boolean, text: string}>}
 */
async function inspect(blob) {
  let decoded;
  try {
    const context = new OfflineAudioContext(1, 1, 16000);
    decoded = await context.decodeAudioData(await blob.arrayBuffer());
  } catch {
    return { ok: false, text: 'This file is not audio the browser can read (use wav, mp3, ogg, webm or flac).' };
  }
  const samples = decoded.getChannelData(0);
  let peak = 0;
  let sum = 0;
  let clipped = 0;
  for (const value of samples) {
    const magnitude = Math.abs(value);
    peak = Math.max(peak, magnitude);
    sum += value * value;
    if (magnitude >= 0.999) clipped += 1;
  }
  const seconds = decoded.duration;
  const dbfs = 20 * Math.log10(Math.sqrt(sum / Math.max(1, samples.length)) || 1e-10);
  const facts = `${seconds.toFixed(1)} s, level ${dbfs.toFixed(0)} dBFS, peak ${(peak * 100).toFixed(0)} %`;
  if (seconds < MIN_S) return { ok: false, text: `Too short: ${facts}. Use at least ${MIN_S} s.` };
  if (seconds > MAX_S) return { ok: false, text: `Too long: ${facts}. Use at most ${MAX_S} s.` };
  if (dbfs < QUIET_DBFS) return { ok: false, text: `Silent or too quiet: ${facts}.` };
  if (clipped / samples.length > CLIP_SHARE) return { ok: false, text: `Clipped: ${facts}. Record less loud.` };
  return { ok: true, text: `Looks good: ${facts}.` };
}

/**
 * Record up to 30 s from the microphone with MediaRecorder; the button stops it early.
 * @param {HTMLButtonElement & {recorder?: MediaRecorder | null}} button
 * @param {(blob: NamedBlob) => void} done
 * @param {HTMLElement} error
 */
async function recordVoice(button, done, error) {
  if (button.recorder) {
    button.recorder.stop();
    return;
  }
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ audio: true });
  } catch (err) {
    showError(error, `The microphone is not available: ${/** @type {Error} */ (err).message}`);
    return;
  }
  const recorder = new MediaRecorder(stream);
  /** @type {Blob[]} */
  const pieces = [];
  recorder.addEventListener('dataavailable', (event) => pieces.push(event.data));
  recorder.addEventListener('stop', () => {
    stream.getTracks().forEach((track) => track.stop());
    button.recorder = null;
    button.textContent = 'Record';
    const blob = /** @type {NamedBlob} */ (new Blob(pieces, { type: recorder.mimeType }));
    blob.name = 'recording.webm';
    done(blob);
  });
  button.recorder = recorder;
  button.textContent = 'Stop recording';
  recorder.start();
  setTimeout(() => recorder.state === 'recording' && recorder.stop(), MAX_S * 1000);
}
