// Overview: ingest rate by protocol, ack latency, storage use against its limits.
// One read of /metrics every 2 s (no admin API call while idle).
import { metrics, sum } from '../api.js';
import { el, replace, fmtNum, fmtBytes, fmtSeconds, badge, notice } from '../ui.js';
import { Chart } from '../chart.js';

export const title = 'Overview';
const EVERY = 2000;

function tile(label, value, sub) {
  return el('div', { class: 'tile' }, el('span', { class: 'tile-label' }, label),
    el('span', { class: 'tile-value' }, value), sub ? el('span', { class: 'tile-sub' }, sub) : null);
}

export function mount(root, ctx) {
  const tiles = el('div', { class: 'tiles', id: 'overview-tiles' });
  const rate = new Chart('Events accepted per second', [
    { name: 'MQTT', color: '#1f5fbf', format: (v) => fmtNum(v, 1) + '/s' },
    { name: 'HTTP', color: '#b8540b', format: (v) => fmtNum(v, 1) + '/s' },
    { name: 'function outputs', color: '#5b4a9c', format: (v) => fmtNum(v, 1) + '/s' },
  ]);
  const latency = new Chart('Durable-ack latency (mean)', [
    { name: 'append → fsync', color: '#0b7a4b', format: fmtSeconds },
    { name: 'MQTT publish → PUBACK', color: '#1f5fbf', format: fmtSeconds },
  ]);
  const storage = el('div', { id: 'overview-storage' });
  const msg = el('div', { 'aria-live': 'polite' });
  replace(root,
    el('h1', {}, 'Overview'),
    el('p', { class: 'muted' }, 'Live from /metrics, every 2 seconds. Rates are averaged over the last interval.'),
    msg, tiles,
    el('div', { class: 'grid2' }, rate.root, latency.root),
    el('h2', {}, 'Storage'), storage);

  let prev = null;
  ctx.every(EVERY, async () => {
    let m;
    try { m = await metrics(); } catch (e) { replace(msg, notice('Metrics unavailable: ' + e.message, 'bad')); return; }
    replace(msg);
    const now = performance.now();
    const cur = {
      t: now,
      mqtt: sum(m, 'fleetgate_ingest_events_by_protocol_total', { protocol: 'mqtt' }),
      http: sum(m, 'fleetgate_ingest_events_by_protocol_total', { protocol: 'http' }),
      other: sum(m, 'fleetgate_ingest_events_by_protocol_total', { protocol: 'other' }),
      appendSum: sum(m, 'fleetgate_ingest_append_seconds_sum'), appendCount: sum(m, 'fleetgate_ingest_append_seconds_count'),
      ackSum: sum(m, 'fleetgate_mqtt_publish_ack_seconds_sum'), ackCount: sum(m, 'fleetgate_mqtt_publish_ack_seconds_count'),
      refused: sum(m, 'fleetgate_ingest_events_refused_total'),
    };
    let r = { mqtt: 0, http: 0, other: 0, append: NaN, ack: NaN };
    if (prev) {
      const dt = Math.max((cur.t - prev.t) / 1000, 0.001);
      const d = (k) => Math.max(cur[k] - prev[k], 0);
      r = {
        mqtt: d('mqtt') / dt, http: d('http') / dt, other: d('other') / dt,
        append: d('appendCount') ? d('appendSum') / d('appendCount') : NaN,
        ack: d('ackCount') ? d('ackSum') / d('ackCount') : NaN,
      };
      rate.push([r.mqtt, r.http, r.other]);
      latency.push([r.append, r.ack]);
    }
    prev = cur;
    const clientsNow = sum(m, 'fleetgate_mqtt_clients_connected');
    const total = cur.mqtt + cur.http + cur.other;
    const nRules = sum(m, 'fleetgate_rules_count');
    replace(tiles,
      tile('Ingest, MQTT', fmtNum(r.mqtt, 1) + ' events/s', fmtNum(cur.mqtt) + ' since start'),
      tile('Ingest, HTTP', fmtNum(r.http, 1) + ' events/s', fmtNum(cur.http) + ' since start'),
      tile('Accepted in all', fmtNum(total), fmtNum(cur.refused) + ' refused'),
      tile('Ack latency (mean)', fmtSeconds(r.append), 'MQTT PUBACK ' + fmtSeconds(r.ack)),
      tile('MQTT clients', fmtNum(clientsNow)),
      tile('Rule set', 'version ' + fmtNum(sum(m, 'fleetgate_rules_version')), `${fmtNum(nRules)} rule${nRules === 1 ? '' : 's'}`));

    const logical = sum(m, 'fleetgate_storage_logical_bytes');
    const maxBytes = sum(m, 'fleetgate_storage_max_bytes');
    const disk = sum(m, 'fleetgate_storage_disk_bytes');
    const free = sum(m, 'fleetgate_storage_disk_free_bytes');
    const minFree = sum(m, 'fleetgate_storage_min_free_bytes');
    const backlog = sum(m, 'fleetgate_storage_compaction_backlog_bytes');
    const full = sum(m, 'fleetgate_storage_full') > 0;
    const pct = maxBytes > 0 ? Math.min(100, (logical / maxBytes) * 100) : null;
    replace(storage,
      el('p', {}, full ? badge('refusing new events: storage full', 'bad') : badge('accepting events', 'ok')),
      el('dl', { class: 'facts' },
        el('dt', {}, 'Log holds'), el('dd', { id: 'storage-logical' }, fmtBytes(logical),
          maxBytes > 0 ? ` of ${fmtBytes(maxBytes)} (storage.max_bytes)` : ' (no storage.max_bytes limit)'),
        el('dt', {}, 'Files on disk'), el('dd', {}, fmtBytes(disk)),
        el('dt', {}, 'Free disk space'), el('dd', {}, fmtBytes(free),
          minFree <= 0 ? ' (free-space check off)' : backlog > 0
            ? ` (events are refused below ${fmtBytes(minFree + backlog)}: storage.min_free_bytes plus ${fmtBytes(backlog)} of compaction backlog)`
            : ` (events are refused below ${fmtBytes(minFree)}, storage.min_free_bytes)`)),
      pct === null ? null : el('label', { class: 'meter-label' }, `Log use: ${pct.toFixed(1)} % of storage.max_bytes `,
        el('meter', { min: 0, max: 100, high: 80, optimum: 0, value: pct.toFixed(1) })));
  });
}
