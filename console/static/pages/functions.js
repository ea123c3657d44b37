// Functions: queue depth, lag, in-flight batches, error rate, circuit and last error of each
// function, with a small live chart of throughput and latency. Every 2 s: one admin API call
// (GET /admin/v1/functions) and one read of /metrics.
import { get, errorText, metrics, sum } from '../api.js';
import { el, replace, table, fmtNum, fmtSeconds, badge, notice } from '../ui.js';
import { Chart } from '../chart.js';

export const title = 'Functions';
const EVERY = 2000;

const stateKind = { running: 'ok', catching_up: 'info', failing: 'bad', paused: 'bad', stopped: 'warn', removed: 'warn' };
const circuitKind = { closed: 'ok', open: 'bad', half_open: 'warn' };

export function mount(root, ctx) {
  const msg = el('div', { 'aria-live': 'polite' });
  const tbl = el('div', { id: 'functions-table' });
  const cards = el('div', { class: 'grid2', id: 'function-charts' });
  replace(root, el('h1', {}, 'Functions'),
    el('p', { class: 'muted' }, 'Refreshed every 2 seconds. Error rate and throughput are over the last interval. ',
      el('a', { href: '#/dlq' }, 'Dead letters'), ' are replayed from their own page.'),
    msg, tbl, el('h2', {}, 'Throughput and latency'), cards);

  const charts = new Map(); // name → Chart
  let prev = null; // {t, byName: {successes, failures, events, durSum, durCount}}

  ctx.every(EVERY, async () => {
    const [r, m] = await Promise.all([get('/admin/v1/functions'), metrics().catch(() => null)]);
    if (!r.ok) { replace(msg, notice('Could not read the functions: ' + errorText(r), 'bad')); return; }
    replace(msg);
    const now = performance.now();
    const byName = {};
    for (const f of r.data) {
      const l = { function: f.name };
      byName[f.name] = {
        successes: f.successes, failures: f.failures,
        events: m ? sum(m, 'fleetgate_function_batch_size_sum', l) : 0,
        durSum: m ? sum(m, 'fleetgate_function_duration_seconds_sum', l) : 0,
        durCount: m ? sum(m, 'fleetgate_function_duration_seconds_count', l) : 0,
      };
    }
    const dt = prev ? Math.max((now - prev.t) / 1000, 0.001) : 0;
    const rows = r.data.map((f) => {
      const c = byName[f.name], p = prev && prev.byName[f.name];
      let errRate = '–', thr = NaN, lat = NaN;
      if (p) {
        const ok = Math.max(c.successes - p.successes, 0), bad = Math.max(c.failures - p.failures, 0);
        errRate = ok + bad ? `${((bad / (ok + bad)) * 100).toFixed(0)} %` : '0 %';
        thr = Math.max(c.events - p.events, 0) / dt;
        const dc = c.durCount - p.durCount;
        lat = dc > 0 ? (c.durSum - p.durSum) / dc : NaN;
      }
      if (f.state !== 'removed') {
        if (!charts.has(f.name)) {
          const ch = new Chart(`${f.name}`, [
            { name: 'events sent/s', color: '#1f5fbf', format: (v) => fmtNum(v, 1) },
            { name: 'batch latency', color: '#b8540b', format: fmtSeconds },
            { name: 'queue', color: '#5b4a9c', format: (v) => fmtNum(v) },
          ]);
          ch.root.dataset.function = f.name;
          charts.set(f.name, ch);
          cards.append(ch.root);
        }
        if (p) charts.get(f.name).push([thr, lat, f.queue_depth]);
      }
      const circuit = f.circuit ? f.circuit.state : '';
      return el('tr', { 'data-function': f.name },
        el('th', { scope: 'row' }, f.name, el('span', { class: 'muted' }, ' ' + (f.type || ''))),
        el('td', { class: 'state' }, badge(f.state, stateKind[f.state] || 'info')),
        el('td', { class: 'num queue' }, fmtNum(f.queue_depth)),
        el('td', { class: 'num' }, fmtSeconds(f.lag_seconds)),
        el('td', { class: 'num' }, fmtNum(f.in_flight)),
        el('td', { class: 'num' }, errRate),
        el('td', { class: 'num' }, fmtNum(f.successes), ' / ', fmtNum(f.failures), ' / ', fmtNum(f.retries)),
        el('td', { class: 'circuit' }, circuit ? badge(circuit.replace('_', '-'), circuitKind[circuit] || 'info') : '–'),
        el('td', { class: 'num' }, f.dead_letters ? el('a', { href: '#/dlq?function=' + encodeURIComponent(f.name) }, fmtNum(f.dead_letters)) : '0'),
        el('td', { class: 'lasterr' }, f.last_error || (f.circuit && f.circuit.last_error) || ''));
    });
    replace(tbl, table(`${r.data.length} functions`, ['Function', 'State', 'Queue', 'Lag', 'In flight', 'Error rate',
      'Batches ok / failed / retried', 'Circuit', 'Dead letters', 'Last error'], rows, { id: 'functions' }));
    prev = { t: now, byName };
  });
}
