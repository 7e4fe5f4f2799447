// creditgraph operator console: a hash-routed page over the JSON API, with no dependencies.
//
// Security: every string that comes from the API reaches the DOM as text (text nodes,
// textContent, setAttribute), never as markup, so an account id like `<script>` stays a
// string. index.html has no inline script or style, so the server's strict CSP holds; charts
// are SVG elements whose geometry is set through attributes and whose colours come from
// style.css classes.
//
// Amounts are decimal strings and are shown exactly as the API sends them; Number() is used
// only to place points and bars in a chart.
'use strict';

const TOKEN_KEY = 'creditgraph.token';
const SVG_NS = 'http://www.w3.org/2000/svg';
const PAGE_SIZE = 50;
const ENTRY_PAGE_SIZE = 1000; // the API's maximum
const ENTRY_PAGES_MAX = 5; // the balance chart reads at most 5000 entries
const RUNS_SHOWN = 20;

const app = document.getElementById('app');
const banner = document.getElementById('error-banner');
const nav = document.getElementById('nav');

// Bumped on every route change: answers that arrive for an older page are not reported.
let generation = 0;
// A message for the login page to show once (e.g. after the token stopped working).
let loginNotice = '';
// Where to go after logging in: the page the operator was sent away from, if any.
let returnTo = '';

// ---------------------------------------------------------------------------------------
// DOM helpers: strings become text nodes, attributes go through setAttribute.

function build(node, attrs, children) {
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith('on')) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? '' : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}
const el = (tag, attrs, ...children) => build(document.createElement(tag), attrs, children);
const svg = (tag, attrs, ...children) => build(document.createElementNS(SVG_NS, tag), attrs, children);

// A value for a table cell: null as a dash, objects (metadata) as JSON text.
function text(value) {
  if (value === null || value === undefined || value === '') return '—';
  if (typeof value === 'object') return Object.keys(value).length ? JSON.stringify(value) : '—';
  return String(value);
}

// RFC 3339 as "YYYY-MM-DD hh:mm:ssZ": string surgery, so no time zone or locale sneaks in.
function fmtTime(value) {
  if (!value) return '—';
  return String(value).replace('T', ' ').replace(/\.\d+/, '');
}

const enc = encodeURIComponent;
const accountHref = (id) => '#/accounts/' + enc(id);

// "?a=1&b=2" from the fields that are set.
function qs(params) {
  const search = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value !== null && value !== undefined && value !== '') search.set(key, String(value));
  }
  const s = search.toString();
  return s ? '?' + s : '';
}

// ---------------------------------------------------------------------------------------
// API access.

class ApiError extends Error {
  constructor(status, problem) {
    super(`${problem.code}: ${problem.detail}`);
    this.status = status;
    this.problem = problem;
  }
}

const token = () => sessionStorage.getItem(TOKEN_KEY);

// Calls the API with the session's token (or `options.token`); resolves to the parsed JSON,
// rejects with an ApiError carrying the RFC 9457 problem (or one made up for non-JSON errors).
async function api(path, options = {}) {
  const headers = { Accept: 'application/json', Authorization: `Bearer ${options.token ?? token() ?? ''}` };
  const init = { method: options.method || 'GET', headers, cache: 'no-store' };
  if (options.body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(options.body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (err) {
    throw new ApiError(0, { code: 'network_error', detail: String(err && err.message ? err.message : err) });
  }
  const raw = await response.text();
  let body = null;
  try {
    body = raw ? JSON.parse(raw) : null;
  } catch {
    body = null;
  }
  if (!response.ok) {
    const isProblem = body && typeof body === 'object' && typeof body.code === 'string';
    throw new ApiError(response.status, isProblem ? body
      : { code: `http_${response.status}`, detail: response.statusText || raw.slice(0, 200) });
  }
  return body;
}

// ---------------------------------------------------------------------------------------
// Error banner.

function showError(err) {
  const problem = err && err.problem ? err.problem : { code: 'error', detail: String(err && err.message ? err.message : err) };
  let message = `${problem.code}: ${problem.detail ?? problem.title ?? ''}`;
  if (problem.request_id) message += ` (request ${problem.request_id})`;
  banner.replaceChildren(
    el('span', { class: 'error-text' }, message),
    el('button', { type: 'button', class: 'dismiss', 'aria-label': 'Dismiss', onclick: hideError }, '×'),
  );
  banner.hidden = false;
}

function hideError() {
  banner.hidden = true;
  banner.replaceChildren();
}

// The error handler for a page: drops errors of a page the operator already left, and sends
// the operator back to the login page when the token stopped working.
function report(gen) {
  return (err) => {
    if (gen !== generation) return;
    if (err && err.status === 401) {
      sessionStorage.removeItem(TOKEN_KEY);
      loginNotice = 'unknown token: log in again';
      returnTo = location.hash;
      go('#/login');
      return;
    }
    showError(err);
  };
}

// ---------------------------------------------------------------------------------------
// Building blocks.

function figure(label, value, id) {
  return el('div', { class: 'figure' },
    el('div', { class: 'figure-label' }, label),
    el('div', { class: 'figure-value num', id }, value));
}

function section(title, ...children) {
  return el('section', { class: 'panel' }, el('h3', {}, title), ...children);
}

function legend(series) {
  return el('ul', { class: 'legend' },
    series.map((s) => el('li', {}, el('span', { class: `swatch series-${s.key}` }), s.label)));
}

// A table fed page by page. `columns` are [title, item => cell content, class?]; `load(after)`
// resolves to { items, next }. "Next page" replaces the rows, "First page" goes back.
function pagedTable({ id, columns, load, empty, nextId, onError }) {
  const tbody = el('tbody');
  const status = el('p', { class: 'muted' });
  const first = el('button', { type: 'button', class: 'first-page', hidden: true }, 'First page');
  const more = el('button', { type: 'button', class: 'next-page', id: nextId, hidden: true }, 'Next page');
  let next = null;

  async function show(after) {
    more.disabled = first.disabled = true;
    try {
      const page = await load(after);
      tbody.replaceChildren(...page.items.map((item) =>
        el('tr', {}, columns.map(([, cell, cls]) => el('td', { class: cls }, cell(item))))));
      next = page.next ?? null;
      more.hidden = next === null;
      first.hidden = after === null;
      status.textContent = page.items.length ? '' : empty;
    } catch (err) {
      onError(err);
    } finally {
      more.disabled = first.disabled = false;
    }
  }
  more.addEventListener('click', () => show(next));
  first.addEventListener('click', () => show(null));

  const table = el('table', { id, class: 'data' },
    el('thead', {}, el('tr', {}, columns.map(([title, , cls]) => el('th', { class: cls }, title)))),
    tbody);
  return {
    element: el('div', { class: 'table-wrap' }, table, status, el('div', { class: 'pager' }, first, more)),
    reload: () => show(null),
  };
}

// The string among `strings` whose value is `n`, so axis labels show the API's own decimals.
function labelFor(n, strings) {
  return strings.find((s) => Number(s) === n) ?? String(n);
}

const f1 = (n) => n.toFixed(1);

// ---------------------------------------------------------------------------------------
// Charts (inline SVG; colours from style.css classes).

const DAY_SERIES = [
  { key: 'granted', label: 'Granted' },
  { key: 'captured', label: 'Captured' },
  { key: 'refunded', label: 'Refunded' },
];

// Grouped bars: granted / captured / refunded for each UTC day.
function dayChart(days) {
  const W = 900, H = 260, pad = { l: 70, r: 10, t: 12, b: 32 };
  const plotW = W - pad.l - pad.r, plotH = H - pad.t - pad.b;
  const chart = svg('svg', {
    id: 'overview-chart', class: 'chart', viewBox: `0 0 ${W} ${H}`, role: 'img',
    'aria-label': 'Granted, captured and refunded credits per day',
  });
  const strings = days.flatMap((d) => DAY_SERIES.map((s) => d[s.key]));
  const max = Math.max(0, ...strings.map((s) => Number(s) || 0));
  const top = max > 0 ? max : 1;
  const y = (v) => pad.t + plotH - (v / top) * plotH;

  chart.append(
    svg('line', { class: 'axis', x1: pad.l, y1: pad.t + plotH, x2: W - pad.r, y2: pad.t + plotH }),
    svg('line', { class: 'grid', x1: pad.l, y1: pad.t, x2: W - pad.r, y2: pad.t }),
    svg('text', { class: 'tick', x: pad.l - 6, y: pad.t + plotH, 'text-anchor': 'end' }, '0'),
    svg('text', { class: 'tick', x: pad.l - 6, y: pad.t + 10, 'text-anchor': 'end' }, max > 0 ? labelFor(max, strings) : '1'),
  );
  if (!days.length) {
    chart.append(svg('text', { class: 'tick', x: W / 2, y: H / 2, 'text-anchor': 'middle' }, 'No days in the window'));
    return chart;
  }
  const slot = plotW / days.length;
  const barW = (slot * 0.8) / DAY_SERIES.length;
  const labelEvery = Math.ceil(days.length / 10); // about ten date labels whatever the window
  days.forEach((day, i) => {
    const x0 = pad.l + i * slot + slot * 0.1;
    DAY_SERIES.forEach((s, j) => {
      const v = Math.max(0, Number(day[s.key]) || 0);
      chart.append(svg('rect', {
        class: `bar series-${s.key}`, x: f1(x0 + j * barW), y: f1(y(v)),
        width: f1(Math.max(barW - 0.5, 0.5)), height: f1(pad.t + plotH - y(v)),
      }, svg('title', {}, `${day.day} ${s.label.toLowerCase()}: ${day[s.key]}`)));
    });
    if (i % labelEvery === 0 || i === days.length - 1) {
      chart.append(svg('text', { class: 'tick', x: f1(x0 + slot * 0.4), y: H - 10, 'text-anchor': 'middle' },
        String(day.day).slice(5)));
    }
  });
  return chart;
}

const BALANCE_SERIES = [
  { key: 'balance', label: 'Balance' },
  { key: 'held', label: 'Held' },
];

// Step lines of balance_after and held_after over time. Before its first entry an account has
// nothing, so each line starts at 0; the last value runs on a little past the last entry.
function balanceChart(entries) {
  const W = 900, H = 240, pad = { l: 70, r: 12, t: 12, b: 30 };
  const plotW = W - pad.l - pad.r, plotH = H - pad.t - pad.b;
  const chart = svg('svg', {
    id: 'balance-chart', class: 'chart', viewBox: `0 0 ${W} ${H}`, role: 'img',
    'aria-label': 'Balance and held credits over time',
  });
  if (!entries.length) {
    chart.append(svg('text', { class: 'tick', x: W / 2, y: H / 2, 'text-anchor': 'middle' }, 'No ledger entries yet'));
    return chart;
  }
  const times = entries.map((e) => Date.parse(e.at));
  const t0 = times[0];
  const t1 = Math.max(times[times.length - 1], t0 + 1);
  const tEnd = t1 + (t1 - t0) * 0.04;
  const strings = entries.flatMap((e) => [e.balance_after, e.held_after]);
  const values = strings.map((s) => Number(s) || 0);
  const lo = Math.min(0, ...values);
  const hi = Math.max(lo + 1e-9, ...values);
  const x = (t) => pad.l + ((t - t0) / (tEnd - t0)) * plotW;
  const y = (v) => pad.t + plotH - ((v - lo) / (hi - lo)) * plotH;

  const steps = (field) => {
    const points = [[t0, 0]];
    let previous = 0;
    entries.forEach((e, i) => {
      const v = Number(e[field]) || 0;
      points.push([times[i], previous], [times[i], v]);
      previous = v;
    });
    points.push([tEnd, previous]);
    return points.map(([t, v]) => `${f1(x(t))},${f1(y(v))}`).join(' ');
  };

  chart.append(
    svg('line', { class: 'axis', x1: pad.l, y1: f1(y(0)), x2: W - pad.r, y2: f1(y(0)) }),
    svg('text', { class: 'tick', x: pad.l - 6, y: pad.t + 10, 'text-anchor': 'end' }, labelFor(hi, strings)),
    svg('text', { class: 'tick', x: pad.l - 6, y: pad.t + plotH, 'text-anchor': 'end' }, lo < 0 ? labelFor(lo, strings) : '0'),
    svg('text', { class: 'tick', x: pad.l, y: H - 8, 'text-anchor': 'start' }, fmtTime(entries[0].at)),
    svg('text', { class: 'tick', x: W - pad.r, y: H - 8, 'text-anchor': 'end' }, fmtTime(entries[entries.length - 1].at)),
    svg('polyline', { class: 'line series-held', points: steps('held_after') }),
    svg('polyline', { class: 'line series-balance', points: steps('balance_after') }),
  );
  return chart;
}

// ---------------------------------------------------------------------------------------
// Pages. Each one replaces #app's children synchronously, then fills its own nodes as the
// answers arrive, so a slow answer for a page already left lands in detached nodes.

function loginPage() {
  const input = el('input', {
    id: 'login-token', type: 'password', autocomplete: 'off', spellcheck: 'false',
    placeholder: 'paste the admin token', required: true,
  });
  const submit = el('button', { id: 'login-submit', type: 'submit' }, 'Log in');
  const error = el('p', { id: 'login-error', class: 'login-error', role: 'alert' }, loginNotice);
  loginNotice = '';

  async function onSubmit(event) {
    event.preventDefault();
    const candidate = input.value.trim();
    if (!candidate) return;
    submit.disabled = true;
    error.textContent = '';
    try {
      // Any admin-only call proves the token: a service token gets 403 here.
      await api('/v1/accounts?limit=1', { token: candidate });
      sessionStorage.setItem(TOKEN_KEY, candidate);
      const target = returnTo || '#/overview';
      returnTo = '';
      go(target);
    } catch (err) {
      if (err.status === 401) error.textContent = 'unknown token';
      else if (err.status === 403) error.textContent = 'an admin token is required (this is a service token)';
      else error.textContent = err.message;
    } finally {
      submit.disabled = false;
    }
  }

  app.replaceChildren(el('form', { id: 'login-form', class: 'login panel', onsubmit: onSubmit },
    el('h2', {}, 'Operator login'),
    el('label', { for: 'login-token' }, 'Admin token'),
    input, submit, error));
  input.focus();
}

async function overviewPage(gen) {
  const figures = el('div', { class: 'figures' });
  const chartBox = section('Credits per UTC day, last 30 days');
  app.replaceChildren(el('h2', {}, 'Overview'), figures, chartBox);
  try {
    const data = await api('/v1/overview?days=30');
    figures.replaceChildren(
      figure('Pending holds', String(data.pending_holds), 'overview-pending-holds'),
      figure('Held credits', data.held, 'overview-held'));
    chartBox.append(dayChart(data.days || []), legend(DAY_SERIES));
  } catch (err) {
    report(gen)(err);
  }
}

function accountsPage(gen, params) {
  const prefix = params.get('prefix') || '';
  const input = el('input', { id: 'account-search', type: 'search', placeholder: 'account id prefix', value: prefix });
  const form = el('form', {
    class: 'search',
    onsubmit: (event) => {
      event.preventDefault();
      go('#/accounts' + qs({ prefix: input.value.trim() }));
    },
  }, input, el('button', { id: 'account-search-submit', type: 'submit' }, 'Search'));

  const table = pagedTable({
    id: 'accounts-table',
    nextId: 'accounts-next',
    empty: 'No accounts match.',
    onError: report(gen),
    columns: [
      ['Account', (a) => el('a', { class: 'account-link', href: accountHref(a.account_id) }, a.account_id)],
      ['Balance', (a) => a.balance, 'num'],
      ['Held', (a) => a.held, 'num'],
      ['Available', (a) => a.available, 'num'],
    ],
    load: async (after) => {
      const page = await api('/v1/accounts' + qs({ prefix, after, limit: PAGE_SIZE }));
      return { items: page.accounts, next: page.next };
    },
  });
  app.replaceChildren(el('h2', {}, 'Accounts'), form, table.element);
  table.reload();
}

async function accountPage(gen, id) {
  const onError = report(gen);
  const base = `/v1/accounts/${enc(id)}`;
  document.title = `${id} · creditgraph console`;

  const figures = el('div', { class: 'figures' });
  const chartBox = section('Balance over time');
  const grantsBox = section('Grants');

  const holds = pagedTable({
    id: 'holds-table',
    empty: 'No pending holds.',
    onError,
    columns: [
      ['Hold', (h) => h.hold_id, 'id'],
      ['Amount', (h) => h.amount, 'num'],
      ['Captured', (h) => h.captured, 'num'],
      ['Remaining', (h) => h.remaining, 'num'],
      ['Expires', (h) => fmtTime(h.expires_at)],
      ['Reference', (h) => text(h.reference)],
      ['', (h) => el('button', {
        type: 'button', class: 'release', 'data-hold-id': h.hold_id,
        onclick: (event) => release(event.currentTarget, h.hold_id),
      }, 'Release')],
    ],
    load: async (after) => {
      const page = await api(`${base}/holds` + qs({ state: 'pending', after, limit: PAGE_SIZE }));
      return { items: page.holds, next: page.next };
    },
  });

  const runs = pagedTable({
    id: 'runs-table',
    empty: 'No runs.',
    onError,
    columns: [
      ['Run', (r) => el('div', {}, el('div', { class: 'id' }, r.run_id),
        el('div', { class: 'muted' }, `turn ${r.turn_index} · ${fmtTime(r.created_at)}`))],
      ['State', (r) => text(r.state)],
      ['Reserved', (r) => text(r.details?.reserved), 'num'],
      ['Captured', (r) => text(r.details?.captured), 'num'],
      ['Refunded', (r) => text(r.details?.refunded), 'num'],
      ['Credit log', (r) => creditLog(r.details)],
    ],
    load: async (after) => {
      const page = await api(`${base}/runs` + qs({ after, limit: RUNS_SHOWN }));
      return { items: page.runs, next: page.next };
    },
  });

  const jobs = pagedTable({
    id: 'jobs-table',
    empty: 'No jobs.',
    onError,
    columns: [
      ['Job', (j) => j.job_id, 'id'],
      ['Run', (j) => j.run_id, 'id'],
      ['Status', (j) => text(j.status)],
      ['Stage', (j) => `${text(j.stage)} (${text(j.progress)}%)`],
      ['Price', (j) => text(j.price), 'num'],
      ['Error', (j) => text(j.error_code)],
      ['Refund', (j) => (j.refund_applied_at ? `refunded ${fmtTime(j.refund_applied_at)}` : j.refunded ? 'refunded' : 'no')],
    ],
    load: async (after) => {
      const page = await api(`${base}/jobs` + qs({ after, limit: PAGE_SIZE }));
      return { items: page.jobs, next: page.next };
    },
  });

  app.replaceChildren(
    el('p', { class: 'crumbs' }, el('a', { href: '#/accounts' }, 'Accounts'), ' / '),
    el('h2', { id: 'account-id', class: 'id' }, id),
    figures, chartBox, grantsBox,
    section('Pending holds', holds.element),
    section('Recent runs', runs.element),
    section('Jobs', jobs.element));

  async function loadAccount() {
    const account = await api(base);
    figures.replaceChildren(
      figure('Balance', account.balance, 'balance'),
      figure('Held', account.held, 'held'),
      figure('Available', account.available, 'available'),
      figure('Low-balance threshold', text(account.low_balance_threshold), 'low-balance-threshold'));
    grantsBox.replaceChildren(el('h3', {}, 'Grants'), grantsTable(account.grants || []));
  }

  async function loadChart() {
    const entries = [];
    let after = null;
    for (let i = 0; i < ENTRY_PAGES_MAX; i += 1) {
      const page = await api(`${base}/entries` + qs({ after, limit: ENTRY_PAGE_SIZE }));
      entries.push(...page.entries);
      after = page.next ?? null;
      if (after === null) break;
    }
    chartBox.append(balanceChart(entries), legend(BALANCE_SERIES));
    if (after !== null) chartBox.append(el('p', { class: 'muted' }, `Only the first ${entries.length} entries are drawn.`));
  }

  // Releases one hold, then reads the holds and the figures again (the release moved credits
  // from held back to available).
  async function release(button, holdId) {
    button.disabled = true;
    try {
      await api(`/v1/holds/${enc(holdId)}/release`, { method: 'POST', body: {} });
    } catch (err) {
      onError(err);
    }
    await Promise.all([loadAccount().catch(onError), holds.reload()]);
  }

  // A missing account makes every other call fail too: report it once and stop.
  try {
    await loadAccount();
  } catch (err) {
    onError(err);
    return;
  }
  loadChart().catch(onError);
  holds.reload();
  runs.reload();
  jobs.reload();
}

function grantsTable(grants) {
  if (!grants.length) return el('p', { class: 'muted' }, 'No grants.');
  const columns = [
    ['Grant', (g) => g.grant_id, 'id'],
    ['Kind', (g) => text(g.kind)],
    ['Amount', (g) => g.amount, 'num'],
    ['Remaining', (g) => g.remaining, 'num'],
    ['Priority', (g) => text(g.priority), 'num'],
    ['Expires', (g) => (g.expires_at ? fmtTime(g.expires_at) : 'never')],
    ['Reference', (g) => text(g.reference)],
    ['Metadata', (g) => text(g.metadata)],
    ['Created', (g) => fmtTime(g.created_at)],
  ];
  return el('div', { class: 'table-wrap' }, el('table', { id: 'grants-table', class: 'data' },
    el('thead', {}, el('tr', {}, columns.map(([title, , cls]) => el('th', { class: cls }, title)))),
    el('tbody', {}, grants.map((g) => el('tr', {}, columns.map(([, cell, cls]) => el('td', { class: cls }, cell(g))))))));
}

// A run's credit log as a list of "node · action (model): cost".
function creditLog(details) {
  const log = details && Array.isArray(details.log) ? details.log : [];
  if (!log.length) return el('span', { class: 'muted' }, '—');
  return el('ol', { class: 'credit-log' }, log.map((step) => el('li', {},
    `${text(step.node)} · ${text(step.action)}${step.model ? ` (${text(step.model)})` : ''}: `,
    el('span', { class: 'num' }, text(step.cost)))));
}

// ---------------------------------------------------------------------------------------
// Routing: #/login, #/overview, #/accounts?prefix=..., #/accounts/<url-encoded id>.

function go(hash) {
  if (location.hash === hash) render();
  else location.hash = hash; // fires hashchange, which renders
}

function parseHash() {
  const raw = location.hash.replace(/^#/, '') || '/';
  const q = raw.indexOf('?'); // an id's own '?' is encoded, so the first one starts the query
  return {
    path: q < 0 ? raw : raw.slice(0, q),
    params: new URLSearchParams(q < 0 ? '' : raw.slice(q + 1)),
  };
}

function render() {
  generation += 1;
  const gen = generation;
  hideError();
  document.title = 'creditgraph console';
  const { path, params } = parseHash();
  const loggedIn = Boolean(token());
  nav.hidden = !loggedIn;
  for (const link of nav.querySelectorAll('a[data-route]')) {
    if (path.startsWith(link.dataset.route)) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }

  if (path === '/login') return loginPage();
  if (!loggedIn) {
    if (path !== '/') returnTo = location.hash;
    return go('#/login');
  }
  if (path === '/' || path === '') return go('#/overview');
  if (path === '/overview') return overviewPage(gen);
  if (path === '/accounts') return accountsPage(gen, params);
  if (path.startsWith('/accounts/')) {
    let id;
    try {
      id = decodeURIComponent(path.slice('/accounts/'.length));
    } catch {
      app.replaceChildren();
      return showError({ problem: { code: 'bad_link', detail: 'the account id in this link is not valid URL encoding' } });
    }
    return accountPage(gen, id);
  }
  app.replaceChildren(el('p', {}, 'No such page. ', el('a', { href: '#/overview' }, 'Go to the overview')));
}

document.getElementById('logout').addEventListener('click', () => {
  sessionStorage.removeItem(TOKEN_KEY);
  returnTo = '';
  go('#/login');
});
window.addEventListener('hashchange', render);
render();
