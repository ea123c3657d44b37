// The admin API, called with the operator's token (kept in this tab's session storage only).
const KEY = 'fleetgate.token';

export const token = {
  get: () => sessionStorage.getItem(KEY) || '',
  set: (t) => sessionStorage.setItem(KEY, t),
  clear: () => sessionStorage.removeItem(KEY),
};

let unauthorized = () => {};
export function onUnauthorized(f) { unauthorized = f; }

// call sends one request and resolves to {status, ok, data}; it never throws for an HTTP
// error (status 0 means the gateway could not be reached).
export async function call(method, path, opts = {}) {
  const headers = { Authorization: 'Bearer ' + token.get(), Accept: 'application/json' };
  let body;
  if (opts.yaml !== undefined) {
    headers['Content-Type'] = 'application/yaml';
    body = opts.yaml;
  } else if (opts.json !== undefined) {
    headers['Content-Type'] = 'application/json';
    body = JSON.stringify(opts.json);
  }
  let resp;
  try {
    resp = await fetch(path, { method, headers, body, credentials: 'omit', cache: 'no-store', redirect: 'error' });
  } catch (e) {
    return { status: 0, ok: false, data: { error: 'the gateway did not answer: ' + e.message } };
  }
  const text = await resp.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = { error: text.slice(0, 300) }; }
  if (resp.status === 401) unauthorized();
  return { status: resp.status, ok: resp.ok, data };
}

export const get = (path) => call('GET', path);

// errorText is the message of a failed answer.
export function errorText(r) {
  if (r.data && typeof r.data.error === 'string') return r.data.error + (r.status ? ` (HTTP ${r.status})` : '');
  return `HTTP ${r.status}`;
}

// metrics reads /metrics (Prometheus text) into a Map: name → [{labels, value}].
export async function metrics() {
  const resp = await fetch('/metrics', { credentials: 'omit', cache: 'no-store' });
  if (!resp.ok) throw new Error(`/metrics answered HTTP ${resp.status}`);
  return parseProm(await resp.text());
}

const labelRe = /([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"/g;

export function parseProm(text) {
  const out = new Map();
  for (const line of text.split('\n')) {
    if (!line || line[0] === '#') continue;
    const brace = line.indexOf('{');
    const sp = line.lastIndexOf(' ');
    if (sp < 0) continue;
    let name, labels = {};
    if (brace >= 0 && brace < sp) {
      name = line.slice(0, brace);
      const end = line.lastIndexOf('}', sp);
      for (const m of line.slice(brace + 1, end).matchAll(labelRe)) labels[m[1]] = m[2];
    } else {
      name = line.slice(0, sp).trim();
    }
    const value = Number(line.slice(sp + 1));
    if (!out.has(name)) out.set(name, []);
    out.get(name).push({ labels, value });
  }
  return out;
}

// sum adds the samples of name whose labels include every pair of want.
export function sum(m, name, want = {}) {
  let s = 0;
  for (const smp of m.get(name) || []) {
    if (Object.entries(want).every(([k, v]) => smp.labels[k] === v)) s += smp.value;
  }
  return s;
}
