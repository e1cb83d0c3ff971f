// Dialogue studio: a [S1]-[S4] script, a voice per speaker, generated as a job on the
// gateway (/v1/dialogues) with a progress bar, played while it streams, downloaded as WAV.

import { ApiError, el, fillVoiceSelect, listVoices, request, showError, withToken } from './api.js';

const EXAMPLE = `[S1] Welcome back to the show! Today we talk about gardens.
[S2] Thanks for having me. I have been gardening for twenty years.
[S1] What grows best in the shade?
[S2] Ferns, mostly. And moss, if you let it.`;
const POLL_MS = 1000; // a poll a second: well within the API's per-client rate

/**
 * A dialogue job as /v1/dialogues answers (the parts used here).
 * @typedef {object} DialogueJob
 * @property {string} id
 * @property {'running' | 'done' | 'failed' | 'cancelled'} status
 * @property {number} progress 0-1
 * @property {number} turns_done
 * @property {number} turns_total
 * @property {number} audio_s
 * @property {{speaker: number, start_s: number, end_s: number, speaker_similarity?: number | null}[]} turns
 * @property {string} audio_url
 * @property {string} download_url
 * @property {string} [error]
 */

/** @param {HTMLElement} root */
export async function mount(root) {
  const script = el('textarea', { id: 'dialogue-script', rows: '8', 'data-testid': 'dialogue-script' }, EXAMPLE);
  const voices = [1, 2, 3, 4].map((speaker) =>
    el('select', { id: `dialogue-voice-${speaker}`, 'data-testid': `dialogue-voice-${speaker}` },
      new Option(`Engine's own voice for S${speaker}`, '')));
  const generate = el('button', { type: 'submit', 'data-testid': 'dialogue-generate' }, 'Generate');
  const cancel = el('button', { type: 'button', 'data-testid': 'dialogue-cancel', disabled: true }, 'Stop');
  const progress = el('progress', { max: '1', value: '0', 'data-testid': 'dialogue-progress',
    'aria-label': 'Dialogue progress' });
  const status = el('span', { role: 'status', 'data-testid': 'dialogue-status' }, '');
  const player = el('audio', { controls: true, 'data-testid': 'dialogue-player', 'aria-label': 'Dialogue' });
  const download = el('a', { 'data-testid': 'dialogue-download', hidden: true }, 'Download WAV');
  const turns = el('ol', { 'data-testid': 'dialogue-turns', class: 'turns' });
  const error = el('p', { class: 'error', role: 'alert', 'data-testid': 'dialogue-error', hidden: true });
  const form = el('form', { class: 'stack' },
    el('h2', {}, 'Dialogue studio'),
    el('label', { for: 'dialogue-script' }, 'Script: one [S1]–[S4] tag before each line'), script,
    el('div', { class: 'row' }, ...voices.flatMap((select, i) => [
      el('label', { for: select.id }, `S${i + 1}`), select])),
    el('div', { class: 'row' }, generate, cancel, progress, status),
    error, player, download, turns);
  root.append(form);

  try {
    const { voices: known } = await listVoices();
    for (const select of voices) fillVoiceSelect(select, known);
  } catch (err) {
    showError(error, err);
  }

  /** @type {DialogueJob | null} */
  let job = null;

  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    error.hidden = true;
    download.hidden = true;
    turns.replaceChildren();
    /** @type {Record<number, string>} */
    const chosen = {};
    voices.forEach((select, i) => {
      if (select.value) chosen[i + 1] = select.value;
    });
    generate.disabled = true;
    try {
      const response = await request('v1/dialogues', { method: 'POST', json: { script: script.value, voices: chosen } });
      job = /** @type {DialogueJob} */ (await response.json());
      root.dataset.state = 'running';
      cancel.disabled = false;
      player.src = await withToken(job.audio_url.replace(/^\//, '')); // WAV streamed as the turns are spoken
      player.play().catch(() => {});
      await follow(job.id);
    } catch (err) {
      showError(error, err);
      root.dataset.state = 'error';
    } finally {
      generate.disabled = false;
      cancel.disabled = true;
    }
  });

  cancel.addEventListener('click', async () => {
    if (job) await request(`v1/dialogues/${job.id}`, { method: 'DELETE' }).catch(() => {});
  });

  /** @param {string} id */
  async function follow(id) {
    for (;;) {
      /** @type {DialogueJob} */
      let state;
      try {
        state = await request(`v1/dialogues/${id}`).then((r) => r.json());
      } catch (err) {
        if (err instanceof ApiError && err.status === 404) {
          status.textContent = 'Stopped';
          root.dataset.state = 'cancelled';
          return;
        }
        throw err;
      }
      progress.value = state.progress;
      status.textContent = `${state.turns_done} of ${state.turns_total} lines, ${state.audio_s.toFixed(1)} s`;
      turns.replaceChildren(...state.turns.map((turn) =>
        el('li', {}, `S${turn.speaker}: ${turn.start_s.toFixed(1)}–${turn.end_s.toFixed(1)} s` +
          (turn.speaker_similarity == null ? '' : ` (voice match ${turn.speaker_similarity.toFixed(2)})`))));
      if (state.status !== 'running') {
        if (state.status === 'done') {
          download.href = await withToken(state.download_url.replace(/^\//, ''));
          download.download = `${state.id}.wav`;
          download.hidden = false;
        } else {
          showError(error, state.error || `The dialogue ${state.status}.`);
        }
        root.dataset.state = state.status;
        return;
      }
      await new Promise((resolve) => setTimeout(resolve, POLL_MS));
    }
  }
}
