// The console's shell: sign-in, the page router (#/page) and the pollers of the page shown.
import { token, get, onUnauthorized, errorText } from './api.js';
import { replace } from './ui.js';
import * as overview from './pages/overview.js';
import * as rules from './pages/rules.js';
import * as functions from './pages/functions.js';
import * as dlq from './pages/dlq.js';
import * as clients from './pages/clients.js';

const pages = { overview, rules, functions, dlq, clients };
const $ = (id) => document.getElementById(id);

let current = null; // {stop()} of the page shown

// Page context: a page polls with every(); all its timers stop when it is left. Polls wait for
// the previous answer and pause while the tab is hidden, so an idle page stays well under one
// admin API round trip per second.
function pageContext() {
  const timers = new Set();
  let stopped = false;
  const ctx = {
    every(ms, fn) {
      let timer = null;
      const tick = async () => {
        timers.delete(timer);
        if (stopped) return;
        if (!document.hidden) {
          try { await fn(); } catch (e) { setConn('error: ' + e.message); }
        }
        if (!stopped) { timer = setTimeout(tick, ms); timers.add(timer); }
      };
      tick();
    },
    get stopped() { return stopped; },
    stop() { stopped = true; for (const t of timers) clearTimeout(t); timers.clear(); },
  };
  return ctx;
}

function setConn(text) { $('conn').textContent = text; }

function showLogin(message) {
  if (current) { current.stop(); current = null; }
  replace($('page'));
  $('nav').hidden = true;
  $('logout').hidden = true;
  $('login').hidden = false;
  $('login-error').textContent = message || '';
  setConn('');
  $('token').focus();
}

async function route() {
  if (!token.get()) { showLogin(); return; }
  $('login').hidden = true;
  $('nav').hidden = false;
  $('logout').hidden = false;
  const name = (location.hash.replace(/^#\/?/, '').split('?')[0]) || 'overview';
  const page = pages[name] || pages.overview;
  const key = pages[name] ? name : 'overview';
  for (const a of document.querySelectorAll('#nav a')) {
    if (a.dataset.page === key) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  if (current) current.stop();
  const ctx = pageContext();
  current = ctx;
  const root = $('page');
  root.replaceChildren();
  root.dataset.page = key;
  document.title = `${page.title} · fleetgate console`;
  page.mount(root, ctx, { setConn });
  const h1 = root.querySelector('h1');
  if (h1) { h1.tabIndex = -1; h1.focus({ preventScroll: true }); }
}

async function signIn(ev) {
  ev.preventDefault();
  const t = $('token').value.trim();
  if (!t) { $('login-error').textContent = 'Paste an operator token first.'; return; }
  $('login-submit').disabled = true;
  token.set(t);
  const r = await get('/admin/v1/rules/versions');
  $('login-submit').disabled = false;
  if (!r.ok) {
    token.clear();
    $('login-error').textContent = r.status === 401 ? 'The gateway refused this token (invalid or expired).'
      : r.status === 403 ? 'This token is not an operator token: ' + errorText(r) : 'Sign-in failed: ' + errorText(r);
    return;
  }
  $('token').value = '';
  if (!location.hash || location.hash === '#') location.hash = '#/overview';
  else route();
}

function signOut() {
  token.clear();
  showLogin('Signed out.');
}

onUnauthorized(() => { token.clear(); showLogin('The gateway no longer accepts the token (expired or revoked): sign in again.'); });

$('login-form').addEventListener('submit', signIn);
$('logout').addEventListener('click', signOut);
window.addEventListener('hashchange', route);
route();
