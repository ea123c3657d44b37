// Dead letters: browse a function's dead letters with the reason and the event; replay all or
// the selected ones; purge. The counts refresh every 5 s (one admin API call); the list reloads
// when its function's count changes.
import { get, call, errorText } from '../api.js';
import { el, replace, table, fmtNum, fmtTime, notice } from '../ui.js';

export const title = 'Dead letters';
const EVERY = 5000;
const PAGE = 50;

function hashParam(name) {
  const q = location.hash.split('?')[1] || '';
  return new URLSearchParams(q).get(name) || '';
}

export function mount(root, ctx) {
  const select = el('select', { id: 'dlq-function' });
  const result = el('div', { id: 'dlq-result', 'aria-live': 'polite' });
  const listBox = el('div', { id: 'dlq-list' });
  const replaySel = el('button', { type: 'button', id: 'dlq-replay-selected', disabled: true }, 'Replay selected');
  const replayAll = el('button', { type: 'button', id: 'dlq-replay-all' }, 'Replay all');
  const purgeSel = el('button', { type: 'button', id: 'dlq-purge-selected', class: 'danger', disabled: true }, 'Purge selected…');
  const purgeAll = el('button', { type: 'button', id: 'dlq-purge-all', class: 'danger' }, 'Purge all…');
  const confirmBox = el('div', { id: 'dlq-confirm' });
  const more = el('button', { type: 'button', id: 'dlq-more', class: 'secondary', hidden: true }, 'Load more');
  replace(root, el('h1', {}, 'Dead letters'),
    el('p', { class: 'muted' }, 'Events a function could not take after its retries, with the reason. ' +
      'Replaying moves them back to the function\'s queue; purging deletes them for good.'),
    el('div', { class: 'row' }, el('label', { for: 'dlq-function' }, 'Function'), select,
      el('button', { type: 'button', class: 'secondary', id: 'dlq-refresh', onclick: () => load(true) }, 'Refresh')),
    el('div', { class: 'row actions' }, replaySel, replayAll, purgeSel, purgeAll),
    confirmBox, result, listBox, more);

  let fn = hashParam('function');
  let letters = [];
  let next = 0;
  let lastCount = -1;
  const selected = new Set();

  const updateButtons = () => {
    replaySel.disabled = purgeSel.disabled = selected.size === 0;
    replaySel.textContent = selected.size ? `Replay selected (${selected.size})` : 'Replay selected';
    const none = letters.length === 0;
    replayAll.disabled = purgeAll.disabled = none;
  };

  const render = () => {
    if (!fn) { replace(listBox, notice('No function has dead letters to show.')); updateButtons(); return; }
    if (letters.length === 0) { replace(listBox, notice(`${fn} has no dead letters.`, 'ok')); updateButtons(); return; }
    const rows = letters.map((d) => {
      const box = el('input', { type: 'checkbox', id: `dl-${d.seq}`, 'data-seq': d.seq, checked: selected.has(d.seq) });
      box.addEventListener('change', () => { if (box.checked) selected.add(d.seq); else selected.delete(d.seq); updateButtons(); });
      let ev = '';
      try { ev = JSON.stringify(d.event, null, 2); } catch { ev = String(d.event); }
      const evId = d.event && d.event.id ? d.event.id : '';
      const topic = d.event && (d.event.topic || d.event.subject) ? (d.event.topic || d.event.subject) : '';
      return el('tr', { 'data-seq': d.seq },
        el('td', {}, box, el('label', { for: `dl-${d.seq}`, class: 'sr-only' }, `Select dead letter ${d.seq}`)),
        el('td', { class: 'num' }, String(d.seq)),
        el('td', {}, fmtTime(d.at)),
        el('td', { class: 'num' }, String(d.attempts)),
        el('td', { class: 'reason' }, d.reason),
        el('td', {}, d.rule || ''),
        el('td', {}, el('details', {}, el('summary', {}, `${topic} ${evId}`.trim() || 'event'), el('pre', { class: 'json' }, ev))));
    });
    replace(listBox, table(`${fmtNum(letters.length)} dead letters of ${fn} shown`, ['Select', 'Seq', 'Dead since', 'Attempts', 'Reason', 'Rule', 'Event'], rows, { id: 'dlq-table' }));
    updateButtons();
  };

  const load = async (reset) => {
    if (!fn) { render(); return; }
    const after = reset ? 0 : next;
    const r = await get(`/admin/v1/dlq/${encodeURIComponent(fn)}?limit=${PAGE}${after ? '&after=' + after : ''}`);
    if (!r.ok) { replace(result, notice('Could not list the dead letters: ' + errorText(r), 'bad')); return; }
    const page = r.data.dead_letters || [];
    letters = reset ? page : letters.concat(page);
    next = r.data.next || 0;
    more.hidden = !next;
    const seqs = new Set(letters.map((d) => d.seq));
    for (const s of [...selected]) if (!seqs.has(s)) selected.delete(s);
    render();
  };

  const act = async (label, method, suffix, seqs) => {
    replace(confirmBox);
    const body = seqs ? { json: { seqs } } : {};
    const r = await call(method, `/admin/v1/dlq/${encodeURIComponent(fn)}${suffix}`, body);
    if (!r.ok) { replace(result, notice(`${label} failed: ${errorText(r)}`, 'bad')); return; }
    const n = r.data.replayed ?? r.data.purged ?? 0;
    replace(result, notice(`${label}: ${n} dead letter${n === 1 ? '' : 's'} of ${fn} ${method === 'POST' ? 'replayed' : 'purged'}.`, 'ok'));
    selected.clear();
    await load(true);
    lastCount = -1;
  };

  const confirmPurge = (seqs) => {
    const what = seqs ? `${seqs.length} selected dead letter${seqs.length === 1 ? '' : 's'}` : `every dead letter of ${fn}`;
    const yes = el('button', { type: 'button', class: 'danger', id: 'dlq-confirm-yes' }, 'Delete for good');
    const no = el('button', { type: 'button', class: 'secondary' }, 'Cancel');
    yes.addEventListener('click', () => act('Purge', 'DELETE', '', seqs));
    no.addEventListener('click', () => replace(confirmBox));
    replace(confirmBox, el('div', { class: 'confirm', role: 'alertdialog', 'aria-label': 'Confirm purge' },
      el('p', {}, `Delete ${what}? They cannot be replayed afterwards.`), yes, ' ', no));
    yes.focus();
  };

  replaySel.addEventListener('click', () => act('Replay', 'POST', '/replay', [...selected].sort((a, b) => a - b)));
  replayAll.addEventListener('click', () => act('Replay', 'POST', '/replay', null));
  purgeSel.addEventListener('click', () => confirmPurge([...selected].sort((a, b) => a - b)));
  purgeAll.addEventListener('click', () => confirmPurge(null));
  more.addEventListener('click', () => load(false));
  select.addEventListener('change', () => {
    fn = select.value;
    selected.clear();
    replace(result);
    history.replaceState(null, '', '#/dlq?function=' + encodeURIComponent(fn));
    lastCount = -1;
    load(true);
  });

  ctx.every(EVERY, async () => {
    const r = await get('/admin/v1/functions');
    if (!r.ok) { replace(result, notice('Could not read the functions: ' + errorText(r), 'bad')); return; }
    const fns = r.data;
    if (!fn || !fns.some((f) => f.name === fn)) {
      const withDL = fns.find((f) => f.dead_letters > 0);
      fn = withDL ? withDL.name : (fns[0] ? fns[0].name : '');
    }
    const opts = fns.map((f) => el('option', { value: f.name, selected: f.name === fn }, `${f.name} (${fmtNum(f.dead_letters)})`));
    if (document.activeElement !== select) replace(select, opts);
    const count = (fns.find((f) => f.name === fn) || {}).dead_letters ?? 0;
    if (count !== lastCount) { lastCount = count; await load(true); }
  });
}
