// Rules: the live set, a YAML editor validated by the server (every problem shown at its
// rule), a diff against the live set before applying, the dry run, and the version history
// with rollback. While idle: GET /admin/v1/rules every 5 s (the history is read again only
// when the version changes).
import { get, call, errorText } from '../api.js';
import { el, replace, table, fmtNum, fmtTime, badge, notice, rulesYAML, diffLines, diffView } from '../ui.js';

export const title = 'Rules';
const EVERY = 5000;

function functionsText(r) {
  const parts = [];
  if (r.functions && r.functions.length) parts.push(r.functions.join(', '));
  for (const rt of r.routes || []) parts.push(`[${rt.when || 'default'} → ${(rt.functions || []).join(', ')}]`);
  return parts.join(' ');
}

// ruleLines finds the line (0-based) where each item of the top-level rules: list starts.
function ruleLines(text) {
  const lines = text.split('\n');
  const out = [];
  let inRules = false, indent = -1;
  for (let i = 0; i < lines.length; i++) {
    const l = lines[i];
    if (/^rules\s*:/.test(l)) { inRules = true; continue; }
    if (!inRules) continue;
    if (/^\S/.test(l) && !/^-/.test(l) && !/^#/.test(l)) break; // next top-level key
    const m = /^(\s*)- /.exec(l) || /^(\s*)-$/.exec(l);
    if (!m) continue;
    if (indent < 0) indent = m[1].length;
    if (m[1].length === indent) out.push(i);
  }
  return out;
}

export function mount(root, ctx) {
  const liveBox = el('div', { id: 'rules-live' });
  const liveTitle = el('h2', { id: 'rules-live-title' }, 'Live rule set');
  const editor = el('textarea', { id: 'rules-editor', rows: 8, spellcheck: 'false', autocomplete: 'off', 'aria-describedby': 'rules-editor-help rules-problems' });
  const problems = el('div', { id: 'rules-problems', 'aria-live': 'polite' });
  const diffBox = el('div', { id: 'rules-diff' });
  const applyBtn = el('button', { type: 'button', id: 'rules-apply', hidden: true }, 'Apply');
  const resultBox = el('div', { id: 'rules-result', 'aria-live': 'polite' });
  const historyBox = el('div', { id: 'rules-history' });
  const historyMsg = el('div', { id: 'rules-history-result', 'aria-live': 'polite' });

  // Dry run form.
  const dr = {
    topic: el('input', { id: 'dry-topic', type: 'text', required: true, spellcheck: 'false', placeholder: 'devices/dev-1/telemetry' }),
    source: el('select', { id: 'dry-source' }, el('option', { value: 'mqtt' }, 'MQTT'), el('option', { value: 'http' }, 'HTTP')),
    subject: el('input', { id: 'dry-subject', type: 'text', spellcheck: 'false' }),
    tenant: el('input', { id: 'dry-tenant', type: 'text', spellcheck: 'false' }),
    claims: el('textarea', { id: 'dry-claims', rows: 2, spellcheck: 'false', placeholder: '{"tier":"gold"}' }),
    payload: el('textarea', { id: 'dry-payload', rows: 3, spellcheck: 'false', placeholder: '{"temp":71}' }),
  };
  const dryResult = el('div', { id: 'dry-result', 'aria-live': 'polite' });
  const field = (id, label, input, hint) => el('div', { class: 'field' }, el('label', { for: id }, label), input, hint ? el('small', { class: 'muted' }, hint) : null);
  const dryForm = el('form', { id: 'dry-form', class: 'fields' },
    field('dry-topic', 'Topic', dr.topic), field('dry-source', 'Protocol', dr.source),
    field('dry-subject', 'Subject', dr.subject), field('dry-tenant', 'Tenant', dr.tenant),
    field('dry-claims', 'Claims (JSON object)', dr.claims), field('dry-payload', 'Payload (JSON, or any text)', dr.payload),
    el('div', {}, el('button', { type: 'submit', id: 'dry-run' }, 'Run dry run')));

  replace(root,
    el('h1', {}, 'Rules'),
    el('section', { 'aria-labelledby': 'rules-live-title' }, liveTitle, liveBox),
    el('section', { 'aria-labelledby': 'rules-edit-title' },
      el('h2', { id: 'rules-edit-title' }, 'Edit the rule set'),
      el('label', { for: 'rules-editor' }, 'Rules (YAML, a top-level rules: list)'),
      el('p', { id: 'rules-editor-help', class: 'muted' }, 'The whole set is replaced atomically. Review sends it to the gateway to be checked; nothing changes until you apply.'),
      editor,
      el('div', { class: 'row actions' },
        el('button', { type: 'button', id: 'rules-review', onclick: () => review() }, 'Review changes'),
        el('button', { type: 'button', class: 'secondary', id: 'rules-reset', onclick: () => { loadEditor(true); replace(resultBox); } }, 'Load the live set')),
      problems, diffBox, applyBtn, resultBox),
    el('section', { 'aria-labelledby': 'dry-title' }, el('h2', { id: 'dry-title' }, 'Dry run'),
      el('p', { class: 'muted' }, 'Which rules of the live set an event would match, which functions it would go to, and why. Nothing is stored or counted.'),
      dryForm, dryResult),
    el('section', { 'aria-labelledby': 'history-title' }, el('h2', { id: 'history-title' }, 'History'), historyMsg, historyBox));

  let live = { version: 0, rules: [] };
  let loadedText = '';   // the editor text as last loaded from the live set
  let reviewed = null;   // {text, rules} of a valid review
  let historyVersion = -1;

  const fit = () => { editor.rows = Math.min(30, Math.max(8, editor.value.split('\n').length + 1)); };

  function loadEditor(force) {
    const text = rulesYAML(live.rules);
    if (force || editor.value === loadedText) { editor.value = text; fit(); }
    loadedText = text;
    reviewed = null;
    applyBtn.hidden = true;
    if (force) { replace(problems); replace(diffBox); }
  }

  function renderLive() {
    liveTitle.textContent = `Live rule set: version ${live.version}, ${live.rules.length} rule${live.rules.length === 1 ? '' : 's'}`;
    liveTitle.dataset.version = String(live.version);
    const rows = live.rules.map((r) => el('tr', { 'data-rule': r.id },
      el('th', { scope: 'row' }, r.id),
      el('td', {}, el('code', {}, r.topic)),
      el('td', {}, r.when ? el('code', {}, r.when) : '–'),
      el('td', {}, functionsText(r)),
      el('td', {}, r.enabled === false ? badge('disabled', 'warn') : badge('enabled', 'ok')),
      el('td', { class: 'num' }, fmtNum(r.stats ? r.stats.matched : 0)),
      el('td', { class: 'num' }, fmtNum(r.stats ? r.stats.passed : 0)),
      el('td', { class: 'num' }, fmtNum(r.stats ? r.stats.errors : 0))));
    replace(liveBox, rows.length ? table('', ['Id', 'Topic', 'When', 'Functions', 'Enabled', 'Matched', 'Passed', 'Errors'], rows, { id: 'rules-table' })
      : notice('The live set has no rules: every event is acknowledged, stored and routed nowhere.', 'warn'));
  }

  function showProblems(text, resp) {
    const lines = ruleLines(text);
    const byRule = new Map();
    const general = [];
    for (const p of resp.problems || []) {
      if (p.index >= 0) {
        if (!byRule.has(p.index)) byRule.set(p.index, []);
        byRule.get(p.index).push(p);
      } else general.push(p);
    }
    const items = [...byRule.entries()].sort((a, b) => a[0] - b[0]).map(([idx, ps]) => {
      const line = lines[idx];
      const id = ps.find((p) => p.rule)?.rule || '';
      const go = line === undefined ? null : el('button', { type: 'button', class: 'link', onclick: () => selectLine(line) }, `line ${line + 1}`);
      return el('li', { class: 'problem-rule', 'data-rule': id, 'data-index': idx },
        el('strong', {}, `rules[${idx}]${id ? ` (id "${id}")` : ''}`), go ? [' at ', go] : null,
        el('ul', {}, ps.map((p) => el('li', {}, p.field ? el('code', {}, p.field) : null, p.field ? ': ' : '', p.reason))));
    });
    for (const p of general) items.push(el('li', { class: 'problem-rule' }, p.field ? el('code', {}, p.field) : null, p.field ? ': ' : '', p.reason));
    replace(problems, el('div', { class: 'problems', role: 'alert' },
      el('p', {}, el('strong', {}, resp.error || 'The rule set was refused; nothing changed.')),
      el('ul', { id: 'rules-problem-list' }, items)));
    editor.setAttribute('aria-invalid', 'true');
    problems.scrollIntoView({ block: 'nearest' });
  }

  function selectLine(n) {
    const lines = editor.value.split('\n');
    let start = 0;
    for (let i = 0; i < n; i++) start += lines[i].length + 1;
    editor.focus();
    editor.setSelectionRange(start, start + (lines[n] || '').length);
    const lh = editor.scrollHeight / Math.max(lines.length, 1);
    editor.scrollTop = Math.max(0, n * lh - editor.clientHeight / 3);
  }

  async function review() {
    const text = editor.value;
    fit();
    replace(resultBox);
    replace(diffBox);
    applyBtn.hidden = true;
    reviewed = null;
    editor.removeAttribute('aria-invalid');
    const r = await call('POST', '/admin/v1/rules/validate', { yaml: text });
    if (r.status === 422) { showProblems(text, r.data); return; }
    if (!r.ok) { replace(problems, el('div', { class: 'problems', role: 'alert' }, el('p', {}, 'The gateway could not read the rule set: ', r.data && r.data.error ? r.data.error : errorText(r)))); return; }
    replace(problems, notice(`Valid: ${r.data.rules.length} rule${r.data.rules.length === 1 ? '' : 's'}. Review the change against the live set (version ${live.version}):`, 'ok'));
    const proposed = rulesYAML(r.data.rules);
    replace(diffBox, diffView(diffLines(rulesYAML(live.rules), proposed), `Changes against version ${live.version}`));
    reviewed = { text, base: live.version };
    applyBtn.textContent = `Apply as version ${live.version + 1}`;
    applyBtn.hidden = false;
    applyBtn.scrollIntoView({ block: 'nearest' });
  }

  applyBtn.addEventListener('click', async () => {
    if (!reviewed || reviewed.text !== editor.value) {
      replace(resultBox, notice('The rules changed since the review: review them again.', 'warn'));
      applyBtn.hidden = true;
      return;
    }
    const r = await call('PUT', '/admin/v1/rules', { yaml: editor.value });
    if (r.status === 422) { showProblems(editor.value, r.data); applyBtn.hidden = true; return; }
    if (!r.ok) { replace(resultBox, notice('Not applied: ' + errorText(r), 'bad')); return; }
    applyBtn.hidden = true;
    replace(diffBox);
    replace(problems);
    replace(resultBox, notice(`Applied: rule set version ${r.data.version} is live.`, 'ok'));
    await refresh(true);
  });
  editor.addEventListener('input', () => { if (reviewed && reviewed.text !== editor.value) applyBtn.hidden = true; });

  dryForm.addEventListener('submit', async (e) => {
    e.preventDefault();
    const req = { topic: dr.topic.value.trim(), source: dr.source.value };
    if (!req.topic) { replace(dryResult, notice('A topic is required.', 'bad')); dr.topic.focus(); return; }
    if (dr.subject.value.trim()) req.subject = dr.subject.value.trim();
    if (dr.tenant.value.trim()) req.tenant = dr.tenant.value.trim();
    if (dr.claims.value.trim()) {
      try { req.claims = JSON.parse(dr.claims.value); } catch (err) { replace(dryResult, notice('Claims must be a JSON object: ' + err.message, 'bad')); dr.claims.focus(); return; }
    }
    const p = dr.payload.value;
    if (p.trim()) {
      try { req.payload = JSON.parse(p); } catch { req.raw_payload = p; }
    }
    const r = await call('POST', '/admin/v1/rules/test', { json: req });
    if (!r.ok) { replace(dryResult, notice('Dry run failed: ' + errorText(r), 'bad')); return; }
    const res = r.data;
    const row = (x, matched) => el('tr', { 'data-rule': x.rule, class: matched ? 'matched' : '' },
      el('th', { scope: 'row' }, x.rule), el('td', {}, matched ? badge('matched', 'ok') : badge('no match', 'info')),
      el('td', {}, (x.functions || []).join(', ')), el('td', {}, x.reason),
      el('td', {}, x.data ? el('code', {}, JSON.stringify(x.data)) : ''));
    replace(dryResult,
      el('p', { id: 'dry-functions' }, el('strong', {}, 'Functions: '),
        res.functions && res.functions.length ? res.functions.join(', ') : 'none (no rule chose a function)',
        el('span', { class: 'muted' }, ` — against version ${res.version}`)),
      table('', ['Rule', 'Result', 'Functions', 'Why', 'Select output'],
        [...(res.matched || []).map((x) => row(x, true)), ...(res.not_matched || []).map((x) => row(x, false))], { id: 'dry-table' }));
  });

  async function loadHistory() {
    const r = await get('/admin/v1/rules/versions');
    if (!r.ok) { replace(historyBox, notice('Could not read the history: ' + errorText(r), 'bad')); return; }
    historyVersion = r.data.live;
    const rows = r.data.versions.map((v) => {
      const note = [];
      if (v.live) note.push(badge('live', 'ok'));
      if (v.rollback_of) note.push(` rollback to ${v.rollback_of}`);
      const actions = el('td', { class: 'actions' });
      const out = el('tr', { 'data-version': v.version },
        el('th', { scope: 'row' }, String(v.version)), el('td', {}, fmtTime(v.applied_at)),
        el('td', { class: 'num' }, String(v.rule_count)), el('td', {}, note), actions);
      if (!v.live) {
        actions.append(
          el('button', { type: 'button', class: 'secondary', 'data-action': 'diff', onclick: () => showVersion(v.version) }, 'Diff'), ' ',
          el('button', { type: 'button', 'data-action': 'rollback', onclick: () => confirmRollback(v.version) }, `Roll back to ${v.version}…`));
      }
      return out;
    });
    replace(historyBox, table(`The last ${r.data.versions.length} versions are kept`, ['Version', 'Applied', 'Rules', 'Note', 'Actions'], rows, { id: 'history-table' }));
  }

  async function showVersion(n) {
    const r = await get(`/admin/v1/rules/versions/${n}`);
    if (!r.ok) { replace(historyMsg, notice(`Could not read version ${n}: ` + errorText(r), 'bad')); return; }
    replace(historyMsg, el('p', {}, `Version ${n} against the live set (version ${live.version}): lines marked - are live now, + would come back.`),
      diffView(diffLines(rulesYAML(live.rules), rulesYAML(r.data.rules)), `Version ${n} against version ${live.version}`));
  }

  function confirmRollback(n) {
    const yes = el('button', { type: 'button', id: 'rollback-confirm' }, `Roll back to version ${n}`);
    const no = el('button', { type: 'button', class: 'secondary' }, 'Cancel');
    yes.addEventListener('click', async () => {
      const r = await call('POST', `/admin/v1/rules/versions/${n}/rollback`);
      if (r.status === 422) {
        replace(historyMsg, el('div', { class: 'problems', role: 'alert' }, el('p', {}, `Version ${n} no longer validates: ${r.data.error}`),
          el('ul', {}, (r.data.problems || []).map((p) => el('li', {}, `rules[${p.index}] (id "${p.rule}").${p.field}: ${p.reason}`)))));
        return;
      }
      if (!r.ok) { replace(historyMsg, notice('Rollback failed: ' + errorText(r), 'bad')); return; }
      replace(historyMsg, notice(`Rolled back: version ${r.data.version} is live with the rules of version ${r.data.rollback_of}.`, 'ok'));
      await refresh(true);
    });
    no.addEventListener('click', () => replace(historyMsg));
    replace(historyMsg, el('div', { class: 'confirm', role: 'alertdialog', 'aria-label': 'Confirm rollback' },
      el('p', {}, `Make the rules of version ${n} live again, as version ${live.version + 1}? Events already stored keep their routes.`), yes, ' ', no));
    yes.focus();
  }

  async function refresh(reloadEditor) {
    const r = await get('/admin/v1/rules');
    if (!r.ok) { replace(liveBox, notice('Could not read the live rules: ' + errorText(r), 'bad')); return; }
    const changed = r.data.version !== live.version;
    live = r.data;
    renderLive();
    if (changed || reloadEditor) loadEditor(!!reloadEditor);
    if (changed && editor.value !== loadedText && !reloadEditor) {
      replace(resultBox, notice(`The live set is now version ${live.version}: review your edit again before applying.`, 'warn'));
    }
    if (live.version !== historyVersion) await loadHistory();
  }

  ctx.every(EVERY, () => refresh(false));
}
