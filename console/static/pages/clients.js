// Clients: MQTT sessions (connected clients, and persistent sessions kept while their client
// is away) from GET /admin/v1/clients, searched by client id prefix. When the gateway has no
// clients API (404), the page says so and polls no more. While idle: one call every 5 s.
import { get, errorText } from '../api.js';
import { el, replace, table, notice, fmtNum, fmtTime, badge } from '../ui.js';

export const title = 'Clients';
const EVERY = 5000;
const LIMIT = 200;

export function mount(root, ctx) {
  const search = el('input', { id: 'client-search', type: 'search', autocomplete: 'off', spellcheck: 'false', 'aria-describedby': 'client-search-help' });
  const body = el('div', { id: 'clients-body', 'aria-live': 'polite' });
  const form = el('form', { class: 'row', role: 'search' },
    el('label', { for: 'client-search' }, 'Client id'), search,
    el('button', { type: 'submit' }, 'Find'),
    el('small', { id: 'client-search-help', class: 'muted' }, 'Client ids that start with this text.'));
  replace(root, el('h1', {}, 'Clients'),
    el('p', { class: 'muted' }, 'MQTT sessions: connected clients, and persistent sessions kept while their client is away. Refreshed every 5 seconds.'),
    form, body);

  let available = true;
  let prefix = '';
  let busy = false;

  const render = (data) => {
    const clients = Array.isArray(data) ? data : (data && Array.isArray(data.clients) ? data.clients : []);
    const rows = clients.map((c) => el('tr', { 'data-client': c.client_id },
      el('th', { scope: 'row' }, String(c.client_id ?? '')),
      el('td', {}, String(c.tenant ?? '')),
      el('td', {}, String(c.subject ?? '')),
      el('td', {}, c.connected === false ? badge('away', 'warn') : badge('connected', 'ok')),
      el('td', {}, fmtTime(c.since)),
      el('td', { class: 'num' }, c.protocol_version ? String(c.protocol_version) : '–'),
      el('td', {}, String(c.remote ?? '')),
      el('td', {}, (c.subscriptions || []).map((s) => `${s.filter} (QoS ${s.qos})`).join(', ')),
      el('td', { class: 'num' }, fmtNum(c.queued_messages ?? 0))));
    if (!rows.length) {
      replace(body, notice(prefix ? `No session has a client id that starts with "${prefix}".` : 'No client is connected and no session is kept.'));
      return;
    }
    replace(body,
      data && data.more ? notice(`Showing the first ${clients.length}: narrow the search to see the others.`, 'info') : null,
      table(`${clients.length} session${clients.length === 1 ? '' : 's'}${prefix ? ` whose client id starts with "${prefix}"` : ''}`,
        ['Client id', 'Tenant', 'Subject', 'State', 'Since', 'MQTT version', 'Remote', 'Subscriptions', 'Queued'], rows, { id: 'clients-table' }));
  };

  const load = async () => {
    if (!available || busy) return;
    busy = true;
    try {
      const r = await get(`/admin/v1/clients?limit=${LIMIT}${prefix ? '&prefix=' + encodeURIComponent(prefix) : ''}`);
      if (r.status === 404) {
        available = false;
        search.disabled = true;
        replace(body, notice('Not available: this gateway has no clients API (GET /admin/v1/clients answered 404). ' +
          'A gateway version with presence lists its connected devices here.', 'warn'));
        return;
      }
      if (!r.ok) { replace(body, notice('Could not list the clients: ' + errorText(r), 'bad')); return; }
      render(r.data);
    } finally {
      busy = false;
    }
  };
  form.addEventListener('submit', (e) => { e.preventDefault(); prefix = search.value.trim(); load(); });
  ctx.every(EVERY, load);
}
