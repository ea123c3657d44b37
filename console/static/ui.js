// Small DOM helpers. Data is only ever rendered as text (textContent), never as HTML.

// el builds an element: el('td', {class: 'num'}, 'text', childNode, ...).
export function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') e.addEventListener(k.slice(2), v);
    else if (k === 'class') e.className = v;
    else if (v === true) e.setAttribute(k, '');
    else e.setAttribute(k, String(v));
  }
  append(e, children);
  return e;
}

function append(e, children) {
  for (const c of children) {
    if (c === undefined || c === null || c === false) continue;
    if (Array.isArray(c)) append(e, c);
    else if (c instanceof Node) e.appendChild(c);
    else e.appendChild(document.createTextNode(String(c)));
  }
}

// replace swaps the children of parent.
export function replace(parent, ...children) {
  parent.replaceChildren();
  append(parent, children);
}

// table builds a table with a caption, headers and rows of cells (strings or nodes).
export function table(caption, headers, rows, attrs = {}) {
  return el('div', { class: 'table-wrap' },
    el('table', attrs,
      caption ? el('caption', {}, caption) : null,
      el('thead', {}, el('tr', {}, headers.map((h) => el('th', { scope: 'col' }, h)))),
      el('tbody', {}, rows)));
}

export function fmtNum(n, digits = 0) {
  if (n === undefined || n === null || Number.isNaN(n)) return '–';
  return Number(n).toLocaleString('en-US', { maximumFractionDigits: digits, minimumFractionDigits: 0 });
}

export function fmtBytes(n) {
  if (n === undefined || n === null || Number.isNaN(n)) return '–';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (Math.abs(n) >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

export function fmtSeconds(s) {
  if (s === undefined || s === null || Number.isNaN(s)) return '–';
  if (s < 1e-3) return `${(s * 1e6).toFixed(0)} µs`;
  if (s < 1) return `${(s * 1e3).toFixed(1)} ms`;
  if (s < 120) return `${s.toFixed(1)} s`;
  return `${(s / 60).toFixed(1)} min`;
}

export function fmtTime(iso) {
  if (!iso) return '–';
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? String(iso) : d.toLocaleString('en-GB', { hour12: false });
}

// badge is a small status label; kind picks its colour (ok, warn, bad, info).
export function badge(text, kind = 'info') {
  return el('span', { class: 'badge ' + kind }, text);
}

// notice shows a message in a box with role=status or alert.
export function notice(text, kind = 'info') {
  return el('p', { class: 'notice ' + kind, role: kind === 'bad' ? 'alert' : 'status' }, text);
}

// --- YAML for the rules editor and the diff: plain data only (maps, lists, scalars) ---

const plain = /^[A-Za-z0-9_][A-Za-z0-9_./+#$-]*$/;
const reserved = /^(true|false|null|yes|no|on|off|y|n|~|[-+]?[0-9].*|\.inf|\.nan)$/i;

function scalar(v) {
  if (v === null || v === undefined) return 'null';
  if (typeof v === 'number' || typeof v === 'boolean') return String(v);
  const s = String(v);
  if (plain.test(s) && !reserved.test(s)) return s;
  return JSON.stringify(s); // a JSON string is a YAML double-quoted scalar
}

function isEmpty(v) {
  return v === undefined || v === null || v === '' || (Array.isArray(v) && v.length === 0) ||
    (typeof v === 'object' && !Array.isArray(v) && Object.keys(v).length === 0);
}

function yamlLines(v, indent, out) {
  const pad = ' '.repeat(indent);
  if (Array.isArray(v)) {
    for (const item of v) {
      if (item !== null && typeof item === 'object' && !isEmpty(item)) {
        const sub = [];
        yamlLines(item, indent + 2, sub);
        sub[0] = pad + '- ' + sub[0].slice(indent + 2);
        out.push(...sub);
      } else {
        out.push(pad + '- ' + (isEmpty(item) && typeof item === 'object' ? (Array.isArray(item) ? '[]' : '{}') : scalar(item)));
      }
    }
    return;
  }
  for (const [k, val] of Object.entries(v)) {
    if (isEmpty(val)) continue;
    if (val !== null && typeof val === 'object') {
      if (Array.isArray(val) && val.every((x) => x === null || typeof x !== 'object')) {
        out.push(`${pad}${scalar(k)}: [${val.map(scalar).join(', ')}]`);
      } else {
        out.push(`${pad}${scalar(k)}:`);
        yamlLines(val, indent + 2, out);
      }
    } else {
      out.push(`${pad}${scalar(k)}: ${scalar(val)}`);
    }
  }
}

// rulesYAML renders a rule list (as the API returns it; counters dropped) as a rules file.
export function rulesYAML(rules) {
  const clean = rules.map((r) => {
    const { stats, ...rest } = r; // eslint-disable-line no-unused-vars
    return rest;
  });
  if (clean.length === 0) return 'rules: []\n';
  const out = ['rules:'];
  yamlLines(clean, 2, out);
  return out.join('\n') + '\n';
}

// diffLines is a line diff (longest common subsequence): [{op: ' '|'-'|'+', text}].
export function diffLines(a, b) {
  const x = a.split('\n'), y = b.split('\n');
  const n = x.length, m = y.length;
  const L = Array.from({ length: n + 1 }, () => new Uint32Array(m + 1));
  for (let i = n - 1; i >= 0; i--) {
    for (let j = m - 1; j >= 0; j--) {
      L[i][j] = x[i] === y[j] ? L[i + 1][j + 1] + 1 : Math.max(L[i + 1][j], L[i][j + 1]);
    }
  }
  const out = [];
  let i = 0, j = 0;
  while (i < n && j < m) {
    if (x[i] === y[j]) { out.push({ op: ' ', text: x[i] }); i++; j++; }
    else if (L[i + 1][j] >= L[i][j + 1]) { out.push({ op: '-', text: x[i++] }); }
    else { out.push({ op: '+', text: y[j++] }); }
  }
  while (i < n) out.push({ op: '-', text: x[i++] });
  while (j < m) out.push({ op: '+', text: y[j++] });
  return out;
}

// diffView renders a diff, or says that there is no change.
export function diffView(diff, label) {
  const changed = diff.filter((d) => d.op !== ' ').length;
  if (changed === 0) return notice('No change: the rules are the same as the live set.', 'info');
  return el('pre', { class: 'diff', 'aria-label': label, tabindex: '0' },
    diff.map((d) => el('span', { class: d.op === '+' ? 'add' : d.op === '-' ? 'del' : 'same' }, `${d.op} ${d.text}\n`)));
}
