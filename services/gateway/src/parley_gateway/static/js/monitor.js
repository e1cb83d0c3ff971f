// Monitor: live state pushed by the gateway (/v1/monitor/stream, server-sent events): the
// model services and their load, sessions, recent turns' stage latencies, the machine, errors.

import { el, withToken } from './api.js';

const STAGES = ['vad_silence_ms', 'asr_ms', 'llm_first_token_ms', 'tts_first_audio_ms', 'voice_to_voice_ms'];
const KINDS = ['vad', 'asr', 'llm', 'tts'];
const RETRY_MS = 2000; // before the stream is opened again after the server refused it

/**
 * What each server-sent event carries (the parts shown here).
 * @typedef {object} MonitorState
 * @property {Record<string, {address: string, engine?: string | null, ready: boolean, active: number,
 *   capacity: number}[]>} [services] instances by kind
 * @property {number} sessions
 * @property {{timings: Record<string, number | boolean>}[]} turns recent turns, oldest first
 * @property {Record<string, {p50: number, p95: number, n: number}>} stages
 * @property {{cpu_percent: number, cpus: number, memory_used_bytes: number, memory_total_bytes: number}} system
 * @property {{index: number, name: string, utilization_percent: number, memory_used_bytes: number,
 *   memory_total_bytes: number}[]} gpus
 * @property {{at: number, code: string, message: string}[]} errors
 */

/** @param {HTMLElement} root */
export async function mount(root) {
  const services = el('tbody', { 'data-testid': 'monitor-services' });
  const stages = el('tbody', { 'data-testid': 'monitor-stages' });
  const chart = el('div', { class: 'chart', 'data-testid': 'monitor-chart', role: 'img',
    'aria-label': 'Voice-to-voice latency of recent turns' });
  const system = el('p', { 'data-testid': 'monitor-system' });
  const gpus = el('ul', { 'data-testid': 'monitor-gpus' });
  const errors = el('ul', { 'data-testid': 'monitor-errors', class: 'errors' });
  const live = el('span', { role: 'status', 'data-testid': 'monitor-live' }, 'Connecting…');
  root.append(
    el('h2', {}, 'Monitor ', live),
    el('h3', {}, 'Services'),
    el('table', {}, el('thead', {}, el('tr', {}, ...['Service', 'Address', 'Engine', 'Ready', 'Streams', 'Capacity']
      .map((h) => el('th', {}, h)))), services),
    el('h3', {}, 'Latency of recent turns (ms)'),
    el('table', {}, el('thead', {}, el('tr', {}, ...['Stage', 'p50', 'p95', 'Turns'].map((h) => el('th', {}, h)))),
      stages),
    chart,
    el('h3', {}, 'Machine'), system, gpus,
    el('h3', {}, 'Recent errors'), errors,
  );

  async function listen() {
    const source = new EventSource(await withToken('v1/monitor/stream'));
    source.onopen = () => {
      live.textContent = 'Live';
    };
    source.onerror = () => {
      live.textContent = 'Reconnecting…';
      // EventSource retries by itself, except after an answer other than the stream (its
      // token expired, say): then start over, with a fresh token.
      if (source.readyState === EventSource.CLOSED) setTimeout(retry, RETRY_MS);
    };
    source.onmessage = (event) => render(JSON.parse(event.data));
  }
  function retry() {
    listen().catch(() => setTimeout(retry, RETRY_MS)); // the server cannot be reached yet
  }
  await listen();

  /** @param {MonitorState} state */
  function render(state) {
    const rows = [];
    for (const kind of KINDS) {
      const instances = state.services?.[kind] ?? [];
      if (instances.length === 0) {
        rows.push(el('tr', { dataset: { kind } }, el('td', {}, kind), el('td', { colspan: '5' }, 'no instance')));
      }
      for (const i of instances) {
        rows.push(el('tr', { dataset: { kind, ready: String(i.ready) } }, el('td', {}, kind), el('td', {}, i.address),
          el('td', {}, i.engine || ''), el('td', {}, i.ready ? 'yes' : 'no'), el('td', {}, String(i.active)),
          el('td', {}, String(i.capacity))));
      }
    }
    services.replaceChildren(...rows);
    stages.replaceChildren(...STAGES.filter((s) => state.stages[s]).map((s) =>
      el('tr', {}, el('td', {}, s.replace(/_ms$/, '')), el('td', {}, String(state.stages[s].p50)),
        el('td', {}, String(state.stages[s].p95)), el('td', {}, String(state.stages[s].n)))));
    const recent = state.turns.map((t) => t.timings.voice_to_voice_ms).filter((v) => typeof v === 'number');
    const top = Math.max(1000, ...recent);
    chart.replaceChildren(...recent.map((v) => {
      const bar = el('span', { class: 'bar', title: `${Math.round(v)} ms` });
      bar.style.height = `${(100 * v) / top}%`; // set through the CSSOM: the page's CSP allows no style attributes
      return bar;
    }));
    const gib = (/** @type {number} */ bytes) => (bytes / 2 ** 30).toFixed(1);
    const s = state.system;
    system.textContent = `${state.sessions} session(s) · CPU ${s.cpu_percent.toFixed(0)} % of ${s.cpus} cores · ` +
      `memory ${gib(s.memory_used_bytes)} of ${gib(s.memory_total_bytes)} GiB`;
    gpus.replaceChildren(...(state.gpus.length ? state.gpus.map((g) => el('li', {}, `GPU ${g.index} ${g.name}: ` +
      `${g.utilization_percent} %, ${gib(g.memory_used_bytes)} of ${gib(g.memory_total_bytes)} GiB`))
      : [el('li', {}, 'No GPU found')]));
    errors.replaceChildren(...state.errors.slice().reverse().map((e) =>
      el('li', {}, `${new Date(e.at * 1000).toLocaleTimeString()} ${e.code}: ${e.message}`)));
    root.dataset.services = KINDS.filter((k) => (state.services?.[k] ?? []).some((i) => i.ready)).join(',');
  }
}
