// Speech playground: any text in any voice through the OpenAI-compatible /v1/audio/speech,
// played while it streams (Media Source Extensions on MP3) and offered as a download.

import { el, fillVoiceSelect, listVoices, request, showError } from './api.js';

/** @param {HTMLElement} root */
export async function mount(root) {
  const text = el('textarea', { id: 'speech-text', rows: '4', 'data-testid': 'speech-text' },
    'Hello! This is Parley speaking. Every word you hear was made just now.');
  const voice = el('select', { id: 'speech-voice', 'data-testid': 'speech-voice' }, new Option('Default voice', ''));
  const format = el('select', { id: 'speech-format', 'data-testid': 'speech-format' },
    ...['mp3', 'wav', 'opus', 'flac', 'aac'].map((f) => new Option(f, f)));
  const speed = el('input', { id: 'speech-speed', type: 'number', min: '0.5', max: '2', step: '0.1', value: '1' });
  const speak = el('button', { type: 'submit', 'data-testid': 'speech-speak' }, 'Speak');
  const player = el('audio', { controls: true, 'data-testid': 'speech-player', 'aria-label': 'Speech' });
  const download = el('a', { 'data-testid': 'speech-download', hidden: true }, 'Download');
  const error = el('p', { class: 'error', role: 'alert', 'data-testid': 'speech-error', hidden: true });
  const form = el('form', { class: 'stack' },
    el('h2', {}, 'Speech playground'),
    el('label', { for: 'speech-text' }, 'Text'), text,
    el('div', { class: 'row' },
      el('label', { for: 'speech-voice' }, 'Voice'), voice,
      el('label', { for: 'speech-format' }, 'Format'), format,
      el('label', { for: 'speech-speed' }, 'Speed'), speed,
      speak),
    error, player, download);
  root.append(form);

  try {
    fillVoiceSelect(voice, (await listVoices()).voices);
  } catch (err) {
    showError(error, err);
  }

  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    error.hidden = true;
    download.hidden = true;
    speak.disabled = true;
    root.dataset.state = 'speaking';
    try {
      const body = {
        model: 'tts-1', input: text.value, voice: voice.value, response_format: format.value,
        speed: Number(speed.value),
      };
      const response = await request('v1/audio/speech', { method: 'POST', json: body });
      const blob = await play(response, format.value, player);
      download.href = URL.createObjectURL(blob);
      download.download = `speech.${format.value === 'opus' ? 'ogg' : format.value}`;
      download.hidden = false;
      root.dataset.state = 'done';
    } catch (err) {
      showError(error, err);
      root.dataset.state = 'error';
    } finally {
      speak.disabled = false;
    }
  });
}

/**
 * Play the response as it arrives (MP3 through Media Source), or once it is whole; returns it as a Blob.
 * @param {Response} response
 * @param {string} format
 * @param {HTMLAudioElement} player
 * @returns {Promise<Blob>}
 */
async function play(response, format, player) {
  const type = response.headers.get('content-type') || 'audio/mpeg';
  if (format !== 'mp3' || !window.MediaSource?.isTypeSupported('audio/mpeg')) {
    const blob = await response.blob();
    player.src = URL.createObjectURL(blob);
    player.play().catch(() => {}); // autoplay may be refused; the controls remain
    return blob;
  }
  const source = new MediaSource();
  player.src = URL.createObjectURL(source);
  await new Promise((resolve) => source.addEventListener('sourceopen', resolve, { once: true }));
  const buffer = source.addSourceBuffer('audio/mpeg');
  // A 200 always has a body, of bytes in plain ArrayBuffers.
  const reader = /** @type {ReadableStream<Uint8Array<ArrayBuffer>>} */ (response.body).getReader();
  const pieces = [];
  let started = false;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    pieces.push(value);
    buffer.appendBuffer(value);
    await new Promise((resolve) => buffer.addEventListener('updateend', resolve, { once: true }));
    if (!started) {
      started = true;
      player.play().catch(() => {});
    }
  }
  source.endOfStream();
  return new Blob(pieces, { type });
}
