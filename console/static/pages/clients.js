// Clients: connected devices and apps (GET /admin/v1/clients), searched by client id. When the
// gateway has no clients API (404), the page says so and polls no more.
import { get, errorText } from '../api.js';
import { el, replace, table, notice, fmtTime, badge } from '../ui.js';

export const title = 'Clients';
const EVERY = 5000;

function list(data) {
  if (Array.isArray(data)) return data;
  if (data && Array.isArray(data.clients)) return data.clients;
  return [];
}

const pick = (c, ...keys) => { for (const k of keys) if (c[k] !== undefined && c[k] !== null && c[k] !== '') return c[k]; return ''; };

export function mount(root, ctx) {
  const search = el('input', { id: 'client-search', type: 'search', autocomplete: 'off', spellcheck: 'false' });
  const body = el('div', { id: 'clients-body', 'aria-live': 'polite' });
  const form = el('form', { class: 'row', role: 'search' },
    el('label', { for: 'client-search' }, 'Client id'), search,
    el('button', { type: 'submit' }, 'Find'));
  replace(root, el('h1', {}, 'Clients'),
    el('p', { class: 'muted' }, 'Connected MQTT clients (presence). Refreshed every 5 seconds.'), form, body);

  let clients = [];
  let available = true;
  const render = () => {
    const q = search.value.trim().toLowerCase();
    const shown = clients.filter((c) => !q || String(pick(c, 'client_id', 'id')).toLowerCase().includes(q));
    const rows = shown.map((c) => el('tr', {},
      el('td', {}, String(pick(c, 'client_id', 'id'))),
      el('td', {}, String(pick(c, 'subject', 'sub'))),
      el('td', {}, String(pick(c, 'tenant'))),
      el('td', {}, String(pick(c, 'protocol_version', 'protocol'))),
      el('td', {}, String(pick(c, 'remote', 'remote_addr'))),
      el('td', {}, fmtTime(pick(c, 'connected_at', 'since', 'at'))),
      el('td', {}, c.connected === false ? badge('offline', 'warn') : badge('connected', 'ok'))));
    replace(body, rows.length ? table(`${shown.length} of ${clients.length} clients`,
      ['Client id', 'Subject', 'Tenant', 'MQTT version', 'Remote', 'Connected at', 'State'], rows)
      : notice(q ? `No client id contains "${search.value.trim()}".` : 'No client is connected.'));
  };
  const load = async () => {
    if (!available) return;
    const r = await get('/admin/v1/clients');
    if (r.status === 404) {
      available = false;
      search.disabled = true;
      replace(body, notice('Not available: this gateway has no clients API (GET /admin/v1/clients answered 404). ' +
        'Upgrade the gateway to list connected devices here.', 'warn'));
      return;
    }
    if (!r.ok) { replace(body, notice('Could not list clients: ' + errorText(r), 'bad')); return; }
    clients = list(r.data);
    render();
  };
  form.addEventListener('submit', (e) => { e.preventDefault(); render(); });
  search.addEventListener('input', render);
  ctx.every(EVERY, load);
}
