// Kamiyo Webhooks dashboard: a thin client of the user API (/api/v1/user-webhooks).
// The API key lives in this tab's sessionStorage only and travels as a bearer header.
// Every value from the API is put into the page with textContent, never as HTML.

const API = '/api/v1/user-webhooks';
const KEY_STORAGE = 'kamiyo.apiKey';
const PAGE_SIZE = 20;
const DETAIL_REFRESH_MS = 10000;
const LIST_REFRESH_MS = 30000;
const SVG_NS = 'http://www.w3.org/2000/svg';

const state = {
  key: null,
  webhooks: [],
  current: null, // the webhook of the detail view
  page: 1,
  status: '',
  total: 0,
  expanded: new Set(),
  timer: null,
  busy: false,
  logSnapshot: null,
  chartSnapshot: null,
};

const $ = (id) => document.getElementById(id);

/** Builds an element: attributes (class, data-*, on* handlers) and children (nodes or text). */
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith('on')) node.addEventListener(name.slice(2), value);
    else if (name === 'class') node.className = value;
    else node.setAttribute(name, value === true ? '' : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
  for (const child of children) node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  return node;
}

// ---------------------------------------------------------------------------
// API access

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function api(method, path, body) {
  const headers = { Authorization: `Bearer ${state.key}`, Accept: 'application/json' };
  const init = { method, headers, cache: 'no-store', credentials: 'omit', referrerPolicy: 'no-referrer' };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let resp;
  try {
    resp = await fetch(path, init);
  } catch (e) {
    throw new ApiError(0, 'network', `the server could not be reached (${e.message})`);
  }
  const text = await resp.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!resp.ok) {
    const detail = data && data.error ? data.error : { code: `http_${resp.status}`, message: text || resp.statusText };
    const err = new ApiError(resp.status, detail.code, detail.message);
    if (resp.status === 401 && state.key) {
      signOut('Your API key is no longer accepted (missing, unknown or revoked). Sign in again.');
    }
    throw err;
  }
  return data;
}

/** An API error in words, for a person. */
function describe(err) {
  if (!(err instanceof ApiError)) return `Unexpected error: ${err && err.message ? err.message : err}`;
  switch (err.code) {
    case 'tier_limit':
      return `Tier limit reached: ${err.message}. Ask your Kamiyo administrator for a higher tier, or delete a webhook.`;
    case 'rate_limited':
      return `Too many requests: ${err.message}.`;
    case 'not_found':
      return `Not found: ${err.message}. It may have been deleted.`;
    case 'network':
      return `Network error: ${err.message}.`;
    default:
      if (err.status >= 500) return `The server failed (${err.code}). Try again in a moment.`;
      return err.message;
  }
}

function showError(node, err) {
  node.textContent = typeof err === 'string' ? err : describe(err);
  node.hidden = false;
}

function clearError(node) {
  node.textContent = '';
  node.hidden = true;
}

let toastTimer = null;
function toast(message, kind = 'ok') {
  const node = $('toast');
  node.textContent = message;
  node.className = `toast toast-${kind}`;
  node.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { node.hidden = true; }, 4000);
}

// ---------------------------------------------------------------------------
// Formatting

/** API times are UTC `YYYY-MM-DDTHH:MM:SS`. */
function parseTime(s) {
  return s ? new Date(`${s}Z`) : null;
}

function fmtTime(s) {
  return s ? `${s.replace('T', ' ')} UTC` : '—';
}

function ago(s) {
  const t = parseTime(s);
  if (!t) return '—';
  const secs = Math.round((Date.now() - t.getTime()) / 1000);
  if (secs < 5) return 'just now';
  if (secs < 60) return `${secs} s ago`;
  if (secs < 3600) return `${Math.floor(secs / 60)} min ago`;
  if (secs < 86400) return `${Math.floor(secs / 3600)} h ago`;
  return `${Math.floor(secs / 86400)} d ago`;
}

function timeCell(s) {
  return s ? el('time', { datetime: `${s}Z`, title: fmtTime(s) }, ago(s)) : '—';
}

function pct(rate) {
  if (rate === null || rate === undefined) return '—';
  const p = rate * 100;
  return `${p === 100 || p === 0 ? p.toFixed(0) : p.toFixed(1)} %`;
}

function ms(v) {
  return v === null || v === undefined ? '—' : `${Math.round(v)} ms`;
}

function usd(v) {
  return `$${Number(v).toLocaleString('en-US')}`;
}

const HEALTH_WORDS = { healthy: 'healthy', degraded: 'degraded', failing: 'failing', no_data: 'no data' };

function healthBadge(w) {
  if (!w.is_active) {
    return w.disabled_reason
      ? el('span', { class: 'badge badge-bad', title: w.disabled_reason }, 'disabled')
      : el('span', { class: 'badge badge-muted' }, 'inactive');
  }
  const status = w.health ? w.health.status : 'no_data';
  return el('span', { class: `badge badge-${status}` }, HEALTH_WORDS[status] || status);
}

function statusBadge(status) {
  return el('span', { class: `badge badge-${status}` }, status);
}

function lastDelivery(h) {
  if (!h) return '—';
  const ok = h.last_success_at;
  const bad = h.last_failure_at;
  if (!ok && !bad) return '—';
  const okLater = ok && (!bad || ok >= bad);
  return el('span', { class: okLater ? 'ok-text' : 'bad-text' },
    okLater ? '✓ ' : '✗ ', timeCell(okLater ? ok : bad));
}

// ---------------------------------------------------------------------------
// Views and routing

const VIEWS = ['signin', 'list', 'form', 'secret', 'detail'];

function show(view) {
  for (const v of VIEWS) $(`view-${v}`).hidden = v !== view;
  $('sign-out').hidden = view === 'signin';
  stopRefresh();
  if (view === 'detail') startRefresh(refreshDetail, DETAIL_REFRESH_MS);
  if (view === 'list') startRefresh(loadList, LIST_REFRESH_MS);
  window.scrollTo(0, 0);
}

function startRefresh(fn, every) {
  state.timer = setInterval(() => {
    if (document.visibilityState === 'visible' && !state.busy) fn(true).catch(() => {});
  }, every);
}

function stopRefresh() {
  if (state.timer) clearInterval(state.timer);
  state.timer = null;
}

function go(hash) {
  if (location.hash === hash) route();
  else location.hash = hash;
}

function route() {
  if (!state.key) {
    show('signin');
    $('api-key').focus();
    return;
  }
  const hash = location.hash || '#/';
  let m;
  if (hash === '#/new') {
    openForm(null);
  } else if ((m = hash.match(/^#\/webhooks\/(\d+)\/edit$/))) {
    openEdit(Number(m[1]));
  } else if ((m = hash.match(/^#\/webhooks\/(\d+)$/))) {
    openDetail(Number(m[1]));
  } else {
    show('list');
    loadList();
  }
}

// ---------------------------------------------------------------------------
// Sign-in

async function signIn(event) {
  event.preventDefault();
  const input = $('api-key');
  const error = $('signin-error');
  const key = input.value.trim();
  clearError(error);
  if (!key) {
    showError(error, 'Paste your API key first.');
    return;
  }
  state.key = key;
  try {
    await api('GET', API);
  } catch (err) {
    state.key = null;
    showError(error, err.status === 401 ? 'This API key was not accepted: it is missing, unknown or revoked.' : err);
    return;
  }
  sessionStorage.setItem(KEY_STORAGE, key);
  input.value = '';
  route();
}

function signOut(message) {
  state.key = null;
  state.current = null;
  sessionStorage.removeItem(KEY_STORAGE);
  show('signin');
  const error = $('signin-error');
  if (message) showError(error, message);
  else clearError(error);
}

// ---------------------------------------------------------------------------
// Webhook list

async function loadList(quiet = false) {
  try {
    const data = await api('GET', API);
    state.webhooks = data.webhooks;
    clearError($('list-error'));
    renderList();
  } catch (err) {
    if (!quiet) showError($('list-error'), err);
  }
}

function renderList() {
  const rows = $('webhook-rows');
  const list = state.webhooks;
  $('webhook-count').textContent = `(${list.length})`;
  $('webhook-empty').hidden = list.length > 0;
  $('webhook-table').hidden = list.length === 0;
  rows.replaceChildren(...list.map((w) => {
    const h = w.health || {};
    const open = () => go(`#/webhooks/${w.id}`);
    return el('tr', { 'data-webhook-id': w.id, class: 'clickable', onclick: open },
      el('td', {},
        el('a', { href: `#/webhooks/${w.id}`, class: 'name' }, w.name),
        el('div', { class: 'mono small muted url' }, w.url)),
      el('td', {}, healthBadge(w)),
      el('td', { class: 'num' }, pct(h.success_rate_24h)),
      el('td', { class: 'num' }, h.deliveries_24h ?? '—'),
      el('td', {}, lastDelivery(w.health)),
      el('td', { class: `num ${h.consecutive_failures > 0 ? 'bad-text' : ''}` }, h.consecutive_failures ?? '—'));
  }));
}

// ---------------------------------------------------------------------------
// Create / edit form

const FIELDS = ['name', 'url', 'min_amount_usd', 'chains', 'protocols', 'categories'];
const LISTS = ['chains', 'protocols', 'categories'];

function formInput(field) {
  return $('webhook-form').elements[field];
}

function clearFormErrors() {
  for (const node of document.querySelectorAll('#webhook-form [data-error-for]')) clearError(node);
  for (const field of FIELDS) formInput(field).classList.remove('invalid');
  clearError($('form-error'));
}

function fieldError(field, message) {
  const node = document.querySelector(`#webhook-form [data-error-for="${field}"]`);
  if (!node) return false;
  node.textContent = message;
  node.hidden = false;
  formInput(field).classList.add('invalid');
  formInput(field).focus();
  return true;
}

function openForm(webhook) {
  state.editing = webhook;
  clearFormErrors();
  $('form-title').textContent = webhook ? `Edit ${webhook.name}` : 'New webhook';
  $('form-submit').textContent = webhook ? 'Save changes' : 'Create webhook';
  const w = webhook || {};
  formInput('name').value = w.name || '';
  formInput('url').value = w.url || '';
  formInput('min_amount_usd').value = w.min_amount_usd ?? '';
  for (const list of LISTS) formInput(list).value = (w[list] || []).join(', ');
  show('form');
  formInput('name').focus();
}

async function openEdit(id) {
  try {
    openForm(await api('GET', `${API}/${id}`));
  } catch (err) {
    show('list');
    loadList();
    showError($('list-error'), err);
  }
}

/** The form's values as an API body; filters left empty are null (cleared). */
function formBody() {
  const body = {
    name: formInput('name').value.trim(),
    url: formInput('url').value.trim(),
  };
  const min = formInput('min_amount_usd').value.replace(/[\s,_$]/g, '');
  if (min === '') body.min_amount_usd = null;
  else if (!Number.isFinite(Number(min))) throw new ApiError(422, 'validation_error', 'min_amount_usd: must be a number of US dollars');
  else body.min_amount_usd = Number(min);
  for (const list of LISTS) {
    const items = formInput(list).value.split(',').map((s) => s.trim()).filter(Boolean);
    body[list] = items.length ? items : null;
  }
  return body;
}

function showFormError(err) {
  if (err instanceof ApiError && err.code === 'validation_error') {
    const m = err.message.match(/^([a-z_]+)/);
    if (m && fieldError(m[1], err.message)) return;
  }
  showError($('form-error'), err);
}

async function submitForm(event) {
  event.preventDefault();
  clearFormErrors();
  const submit = $('form-submit');
  const editing = state.editing;
  let body;
  try {
    body = formBody();
  } catch (err) {
    showFormError(err);
    return;
  }
  submit.disabled = true;
  try {
    if (editing) {
      const updated = await api('PATCH', `${API}/${editing.id}`, body);
      toast(`Saved ${updated.name}`);
      go(`#/webhooks/${updated.id}`);
    } else {
      for (const key of Object.keys(body)) if (body[key] === null) delete body[key];
      const created = await api('POST', API, body);
      showSecret(`Signing secret of ${created.name}`, created.secret, `#/webhooks/${created.id}`);
    }
  } catch (err) {
    showFormError(err);
  } finally {
    submit.disabled = false;
  }
}

// ---------------------------------------------------------------------------
// The secret, shown once

let secretNext = '#/';

function showSecret(title, secret, next) {
  $('secret-title').textContent = title;
  $('secret-value').textContent = secret;
  $('secret-copy-status').textContent = '';
  secretNext = next;
  show('secret');
}

async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    // Not a secure context, or no permission: fall back to a selection copy.
    const area = el('textarea', { class: 'offscreen', readonly: true });
    area.value = text;
    document.body.append(area);
    area.select();
    let ok = false;
    try {
      ok = document.execCommand('copy');
    } catch {
      ok = false;
    }
    area.remove();
    return ok;
  }
}

async function copySecret() {
  const ok = await copyText($('secret-value').textContent);
  $('secret-copy-status').textContent = ok
    ? 'Copied to the clipboard.'
    : 'Copying failed: select the secret and copy it by hand.';
  if (!ok) window.getSelection().selectAllChildren($('secret-value'));
}

function secretDone() {
  $('secret-value').textContent = '';
  go(secretNext);
}

// ---------------------------------------------------------------------------
// One webhook

async function openDetail(id) {
  if (!state.current || state.current.id !== id) {
    state.current = null;
    state.page = 1;
    state.status = '';
    state.expanded.clear();
    $('status-filter').value = '';
    $('test-result').hidden = true;
    $('health-cards').replaceChildren();
    $('chart').replaceChildren();
    $('delivery-rows').replaceChildren();
    for (const f of ['d-name', 'd-url', 'd-id', 'd-hint', 'd-created', 'd-filters']) $(f).textContent = '';
  }
  clearError($('detail-error'));
  show('detail');
  try {
    await refreshDetail(false, id);
  } catch (err) {
    showError($('detail-error'), err);
  }
}

async function refreshDetail(quiet = false, id = state.current && state.current.id) {
  if (!id) return;
  const [webhook] = await Promise.all([
    api('GET', `${API}/${id}`),
    loadDeliveries(quiet, id),
    loadChart(id).catch(() => {}),
  ]);
  state.current = webhook;
  renderDetail(webhook);
}

function renderDetail(w) {
  $('d-name').textContent = w.name;
  $('d-url').textContent = w.url;
  $('d-id').textContent = w.id;
  $('d-hint').textContent = w.secret_hint;
  $('d-created').textContent = fmtTime(w.created_at);
  $('d-name').append(' ', healthBadge(w));
  $('d-toggle').textContent = w.is_active ? 'Deactivate' : 'Activate';
  $('d-test').disabled = false;

  const banner = $('d-disabled');
  if (!w.is_active) {
    banner.className = w.disabled_reason ? 'banner banner-bad' : 'banner banner-muted';
    banner.textContent = w.disabled_reason
      ? `The service deactivated this webhook: ${w.disabled_reason}. The Activate button above does that.`
      : 'This webhook is inactive: no exploit alerts are sent to it. Activate it to resume.';
    banner.hidden = false;
  } else {
    banner.hidden = true;
  }

  const filters = [];
  if (w.min_amount_usd !== null && w.min_amount_usd !== undefined) filters.push(`amount ≥ ${usd(w.min_amount_usd)}`);
  for (const list of LISTS) if (w[list] && w[list].length) filters.push(`${list}: ${w[list].join(', ')}`);
  $('d-filters').textContent = filters.length ? `Filters: ${filters.join(' · ')}` : 'Filters: none (every exploit is sent)';

  const h = w.health || {};
  const card = (label, value, cls = '', title = null) =>
    el('div', { class: `stat ${cls}`, title }, el('div', { class: 'stat-label' }, label), el('div', { class: 'stat-value' }, value));
  $('health-cards').replaceChildren(
    card('Status', healthBadge(w)),
    card('Success 24 h', pct(h.success_rate_24h)),
    card('Success all time', pct(h.success_rate_all_time)),
    card('Deliveries 24 h', h.deliveries_24h ?? 0),
    card('Mean latency 24 h', ms(h.mean_latency_ms_24h)),
    card('Consecutive failures', h.consecutive_failures ?? 0, h.consecutive_failures > 0 ? 'stat-bad' : ''),
    card('Last success', timeCell(h.last_success_at), '', fmtTime(h.last_success_at)),
    card('Last failure', timeCell(h.last_failure_at), h.last_failure_at ? 'stat-bad' : '', fmtTime(h.last_failure_at)),
  );
  if (h.last_error) {
    $('health-cards').append(el('div', { class: 'stat stat-wide stat-bad' },
      el('div', { class: 'stat-label' }, 'Last error'), el('div', { class: 'mono small' }, h.last_error)));
  }
}

async function detailAction(button, fn) {
  clearError($('detail-error'));
  button.disabled = true;
  state.busy = true;
  try {
    await fn();
  } catch (err) {
    showError($('detail-error'), err);
  } finally {
    button.disabled = false;
    state.busy = false;
  }
}

function sendTest() {
  const w = state.current;
  if (!w) return;
  const box = $('test-result');
  box.className = 'test-result pending';
  box.textContent = `Sending a webhook.test event to ${w.url}…`;
  box.hidden = false;
  return detailAction($('d-test'), async () => {
    try {
      const r = await api('POST', `${API}/${w.id}/test`);
      const ok = r.status === 'success';
      box.className = `test-result ${ok ? 'ok' : 'bad'}`;
      box.replaceChildren(
        el('strong', {}, ok ? 'Test delivered. ' : 'Test failed. '),
        r.status_code !== null ? `The endpoint answered HTTP ${r.status_code}` : 'No HTTP answer',
        ` in ${r.latency_ms} ms`,
        r.error ? el('span', {}, ': ', el('span', { class: 'mono' }, r.error)) : '',
        '. ',
        el('span', { class: 'muted' }, `Delivery ${r.delivery_id} in the log below.`));
    } catch (err) {
      box.className = 'test-result bad';
      box.textContent = `The test could not be sent: ${describe(err)}`;
      throw err;
    }
    await refreshDetail(true);
  });
}

function toggleActive() {
  const w = state.current;
  if (!w) return;
  return detailAction($('d-toggle'), async () => {
    const updated = await api('PATCH', `${API}/${w.id}`, { is_active: !w.is_active });
    toast(updated.is_active ? `Activated ${updated.name}` : `Deactivated ${updated.name}`);
    await refreshDetail(true);
  });
}

async function regenerateSecret() {
  const w = state.current;
  if (!w) return;
  const ok = await confirmAction('Regenerate the signing secret?',
    `The current secret of “${w.name}” stops working immediately, including for queued retries. ` +
    'Update your endpoint with the new secret right away.', 'Regenerate');
  if (!ok) return;
  return detailAction($('d-regenerate'), async () => {
    const r = await api('POST', `${API}/${w.id}/regenerate-secret`);
    showSecret(`New signing secret of ${w.name}`, r.secret, `#/webhooks/${w.id}`);
  });
}

async function deleteWebhook() {
  const w = state.current;
  if (!w) return;
  const ok = await confirmAction(`Delete “${w.name}”?`,
    'Its queued deliveries stop and it receives no more alerts. This cannot be undone.', 'Delete');
  if (!ok) return;
  return detailAction($('d-delete'), async () => {
    await api('DELETE', `${API}/${w.id}`);
    state.current = null;
    toast(`Deleted ${w.name}`);
    go('#/');
  });
}

function confirmAction(title, text, okLabel) {
  const dialog = $('confirm-dialog');
  $('confirm-title').textContent = title;
  $('confirm-text').textContent = text;
  $('confirm-ok').textContent = okLabel;
  return new Promise((resolve) => {
    const done = (answer) => {
      $('confirm-ok').removeEventListener('click', yes);
      $('confirm-cancel').removeEventListener('click', no);
      dialog.removeEventListener('cancel', no);
      if (dialog.open) dialog.close();
      resolve(answer);
    };
    const yes = () => done(true);
    const no = () => done(false);
    $('confirm-ok').addEventListener('click', yes);
    $('confirm-cancel').addEventListener('click', no);
    dialog.addEventListener('cancel', no);
    dialog.showModal();
    $('confirm-cancel').focus();
  });
}

// ---------------------------------------------------------------------------
// Chart: attempts per hour (stacked bars) and mean latency (line), last 24 h

async function loadChart(id) {
  const data = await api('GET', `${API}/${id}/stats?hours=24`);
  const snapshot = JSON.stringify([id, data.buckets]);
  if (snapshot === state.chartSnapshot && $('chart').firstChild) return;
  state.chartSnapshot = snapshot;
  drawChart(data.buckets);
}

function niceMax(v) {
  if (v <= 4) return 4;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

let lastBuckets = null;

function drawChart(buckets) {
  lastBuckets = buckets;
  // Drawn at the holder's pixel width, so text keeps its size on any screen.
  const W = Math.max(320, $('chart').clientWidth || 760), H = 200, left = 40, right = 56, top = 12, bottom = 28;
  const plotW = W - left - right, plotH = H - top - bottom;
  const n = buckets.length || 1;
  const slot = plotW / n;
  const maxCount = niceMax(Math.max(0, ...buckets.map((b) => b.succeeded + b.failed)));
  const lats = buckets.map((b) => b.mean_latency_ms).filter((v) => v !== null);
  const maxLat = niceMax(Math.max(0, ...lats));
  const y = (v) => top + plotH - (v / maxCount) * plotH;
  const yLat = (v) => top + plotH - (v / maxLat) * plotH;

  const root = svg('svg', { viewBox: `0 0 ${W} ${H}`, class: 'chart-svg', role: 'img' });
  root.append(svg('title', {}, 'Delivery attempts per hour (UTC) over the last 24 hours'));
  for (let i = 0; i <= 4; i++) {
    const v = (maxCount / 4) * i;
    root.append(svg('line', { x1: left, x2: W - right, y1: y(v), y2: y(v), class: 'grid' }));
    root.append(svg('text', { x: left - 6, y: y(v) + 4, class: 'axis', 'text-anchor': 'end' }, Number.isInteger(v) ? v : v.toFixed(1)));
    root.append(svg('text', { x: W - right + 6, y: yLat((maxLat / 4) * i) + 4, class: 'axis axis-lat' }, `${Math.round((maxLat / 4) * i)} ms`));
  }
  buckets.forEach((b, i) => {
    const x = left + i * slot + slot * 0.15;
    const w = slot * 0.7;
    const g = svg('g', { class: 'bar' });
    g.append(svg('title', {}, `${b.start.slice(11, 16)} UTC — ${b.succeeded} succeeded, ${b.failed} failed` +
      (b.mean_latency_ms !== null ? `, mean latency ${Math.round(b.mean_latency_ms)} ms` : '')));
    g.append(svg('rect', { x: left + i * slot, y: top, width: slot, height: plotH, class: 'hover' }));
    if (b.succeeded) g.append(svg('rect', { x, y: y(b.succeeded), width: w, height: y(0) - y(b.succeeded), class: 'ok' }));
    if (b.failed) {
      g.append(svg('rect', { x, y: y(b.succeeded + b.failed), width: w, height: y(b.succeeded) - y(b.succeeded + b.failed), class: 'fail' }));
    }
    root.append(g);
    if (i % (slot < 34 ? 6 : 3) === 0 || i === n - 1) {
      root.append(svg('text', { x: left + i * slot + slot / 2, y: H - 8, class: 'axis', 'text-anchor': 'middle' }, b.start.slice(11, 16)));
    }
  });
  const points = buckets
    .map((b, i) => (b.mean_latency_ms === null ? null : [left + i * slot + slot / 2, yLat(b.mean_latency_ms)]))
    .filter(Boolean);
  if (points.length > 1) root.append(svg('polyline', { points: points.map((p) => p.join(',')).join(' '), class: 'lat' }));
  for (const [cx, cy] of points) root.append(svg('circle', { cx, cy, r: 3, class: 'lat-dot' }));
  const total = buckets.reduce((s, b) => s + b.succeeded + b.failed, 0);
  const holder = $('chart');
  holder.replaceChildren(root);
  holder.dataset.attempts = String(total);
  if (total === 0) holder.append(el('p', { class: 'chart-empty muted' }, 'No delivery attempts in the last 24 hours.'));
}

// ---------------------------------------------------------------------------
// Delivery log

async function loadDeliveries(quiet, id = state.current && state.current.id) {
  const q = new URLSearchParams({ page: state.page, page_size: PAGE_SIZE });
  if (state.status) q.set('status', state.status);
  try {
    const data = await api('GET', `${API}/${id}/deliveries?${q}`);
    state.total = data.total;
    clearError($('log-error'));
    // A background refresh that changes nothing leaves the table (and open details) alone.
    const snapshot = JSON.stringify([id, state.page, state.status, [...state.expanded], data]);
    if (quiet && snapshot === state.logSnapshot) return;
    state.logSnapshot = snapshot;
    renderDeliveries(data.deliveries);
  } catch (err) {
    if (!quiet) showError($('log-error'), err);
  }
}

function renderDeliveries(list) {
  const rows = [];
  for (const d of list) {
    const expanded = state.expanded.has(d.id);
    const toggle = () => toggleDelivery(d.id);
    rows.push(el('tr', { 'data-delivery-id': d.id, class: `clickable ${expanded ? 'open' : ''}`, onclick: toggle },
      el('td', { class: 'mono' }, el('span', { class: 'caret' }, expanded ? '▾ ' : '▸ '), `#${d.id}`),
      el('td', { class: 'mono small' }, d.event, d.exploit_id ? el('span', { class: 'muted' }, ` · exploit ${d.exploit_id}`) : ''),
      el('td', {}, statusBadge(d.status)),
      el('td', { class: `num mono ${d.status_code && (d.status_code < 200 || d.status_code > 299) ? 'bad-text' : ''}` }, d.status_code ?? '—'),
      el('td', { class: 'num' }, d.attempts),
      el('td', {}, timeCell(d.sent_at)),
      el('td', { class: 'num' }, ms(d.latency_ms)),
      el('td', { class: 'small' },
        d.error ? el('span', { class: 'bad-text' }, d.error) : '',
        d.status === 'pending' && d.next_attempt_at ? el('span', { class: 'muted' }, ` next attempt ${fmtTime(d.next_attempt_at)}`) : '')));
    if (expanded) {
      rows.push(el('tr', { class: 'delivery-detail', 'data-for': d.id },
        el('td', { colspan: 8 }, el('div', { class: 'detail-body', id: `delivery-detail-${d.id}` }, 'Loading…'))));
    }
  }
  $('delivery-rows').replaceChildren(...rows);
  $('delivery-empty').hidden = list.length > 0;
  const pages = Math.max(1, Math.ceil(state.total / PAGE_SIZE));
  $('page-info').textContent = `Page ${state.page} of ${pages} · ${state.total} deliver${state.total === 1 ? 'y' : 'ies'}`;
  $('page-prev').disabled = state.page <= 1;
  $('page-next').disabled = state.page >= pages;
  for (const id of state.expanded) if (list.some((d) => d.id === id)) loadDeliveryDetail(id);
}

function toggleDelivery(id) {
  if (state.expanded.has(id)) state.expanded.delete(id);
  else state.expanded.add(id);
  loadDeliveries(false);
}

async function loadDeliveryDetail(id) {
  const w = state.current;
  if (!w) return;
  let d;
  try {
    d = await api('GET', `${API}/${w.id}/deliveries/${id}`);
  } catch (err) {
    const holder = $(`delivery-detail-${id}`);
    if (holder) holder.replaceChildren(el('p', { class: 'form-error' }, describe(err)));
    return;
  }
  const holder = $(`delivery-detail-${id}`);
  if (holder) holder.replaceChildren(renderDeliveryDetail(w, d));
}

function renderDeliveryDetail(w, d) {
  const atSend = 'computed at send time with the current secret';
  const headers = [
    ['Content-Type', 'application/json'],
    ['X-Kamiyo-Event', d.event],
    ['X-Kamiyo-Delivery', String(d.id)],
    ['X-Kamiyo-Signature', `hex HMAC-SHA256 of the body, ${atSend}`],
    ['webhook-id', String(d.id)],
    ['webhook-timestamp', 'Unix seconds of each attempt'],
    ['webhook-signature', `v1,<base64 HMAC-SHA256 of id.timestamp.body>, ${atSend}`],
  ];
  const status = el('p', { class: 'muted small resend-status', 'aria-live': 'polite' });
  const resend = el('button', { type: 'button', class: 'btn resend', onclick: (e) => resendDelivery(e.currentTarget, d.id, status) }, 'Resend');
  const copy = el('button', { type: 'button', class: 'btn btn-small', onclick: async () => {
    status.textContent = (await copyText(d.payload)) ? 'Payload copied.' : 'Copying failed.';
  } }, 'Copy payload');
  const pretty = el('button', { type: 'button', class: 'btn btn-small', onclick: (e) => {
    const raw = pre.dataset.raw === 'true';
    pre.textContent = raw ? JSON.stringify(JSON.parse(d.payload), null, 2) : d.payload;
    pre.dataset.raw = raw ? 'false' : 'true';
    e.currentTarget.textContent = raw ? 'Show exact bytes' : 'Format';
  } }, 'Format');
  const pre = el('pre', { class: 'payload mono', 'data-raw': 'true' }, d.payload);

  const attempts = d.attempt_log.length
    ? el('table', { class: 'table inner attempts' },
      el('thead', {}, el('tr', {},
        el('th', { class: 'num' }, '#'), el('th', {}, 'Started'), el('th', { class: 'num' }, 'HTTP'),
        el('th', { class: 'num' }, 'Latency'), el('th', {}, 'Outcome'), el('th', {}, 'Response body'))),
      el('tbody', {}, d.attempt_log.map((a) => el('tr', { class: 'attempt' },
        el('td', { class: 'num' }, a.attempt),
        el('td', { class: 'small nowrap' }, fmtTime(a.started_at)),
        el('td', { class: 'num mono' }, a.status_code ?? '—'),
        el('td', { class: 'num' }, ms(a.latency_ms)),
        el('td', {}, a.error_kind
          ? el('span', { class: 'bad-text' }, el('span', { class: 'badge badge-failed' }, a.error_kind), ' ', a.error || '')
          : el('span', { class: 'badge badge-succeeded' }, 'ok')),
        el('td', {}, a.response_body ? el('code', { class: 'mono small body-snippet' }, a.response_body) : el('span', { class: 'muted' }, '—'))))))
    : el('p', { class: 'muted' }, 'No attempt yet.');

  return el('div', { class: 'detail-grid' },
    el('div', {},
      el('h3', {}, 'Attempts'), attempts,
      el('h3', {}, 'Request headers'),
      el('table', { class: 'table inner headers' }, el('tbody', {}, headers.map(([k, v]) =>
        el('tr', {}, el('th', { class: 'mono' }, k), el('td', { class: 'mono small' }, v))))),
      el('div', { class: 'actions' }, resend, status)),
    el('div', {},
      el('div', { class: 'view-head' }, el('h3', {}, `Payload (${new Blob([d.payload]).size} bytes, exactly as signed)`),
        el('div', { class: 'actions' }, pretty, copy)),
      pre));
}

async function resendDelivery(button, id, status) {
  const w = state.current;
  button.disabled = true;
  status.className = 'muted small resend-status';
  status.textContent = 'Queuing…';
  state.busy = true;
  try {
    await api('POST', `${API}/${w.id}/deliveries/${id}/retry`);
    status.textContent = `Delivery #${id} queued: it is being sent again now.`;
    toast(`Delivery #${id} queued for resending`);
    setTimeout(() => refreshDetail(true).catch(() => {}), 1000);
  } catch (err) {
    status.className = 'form-error small resend-status';
    status.textContent = describe(err);
  } finally {
    button.disabled = false;
    state.busy = false;
  }
}

// ---------------------------------------------------------------------------
// Wiring

function init() {
  $('signin-form').addEventListener('submit', signIn);
  $('sign-out').addEventListener('click', () => signOut());
  $('new-webhook').addEventListener('click', () => go('#/new'));
  $('list-refresh').addEventListener('click', () => loadList());
  $('webhook-form').addEventListener('submit', submitForm);
  $('form-cancel').addEventListener('click', () => go(state.editing ? `#/webhooks/${state.editing.id}` : '#/'));
  $('secret-copy').addEventListener('click', copySecret);
  $('secret-done').addEventListener('click', secretDone);
  $('back-to-list').addEventListener('click', (e) => { e.preventDefault(); go('#/'); });
  $('d-test').addEventListener('click', sendTest);
  $('d-edit').addEventListener('click', () => state.current && go(`#/webhooks/${state.current.id}/edit`));
  $('d-toggle').addEventListener('click', toggleActive);
  $('d-regenerate').addEventListener('click', regenerateSecret);
  $('d-delete').addEventListener('click', deleteWebhook);
  $('log-refresh').addEventListener('click', () => refreshDetail(false).catch((err) => showError($('detail-error'), err)));
  $('status-filter').addEventListener('change', (e) => {
    state.status = e.target.value;
    state.page = 1;
    loadDeliveries(false);
  });
  $('page-prev').addEventListener('click', () => { state.page = Math.max(1, state.page - 1); loadDeliveries(false); });
  $('page-next').addEventListener('click', () => { state.page += 1; loadDeliveries(false); });
  window.addEventListener('hashchange', route);
  let resizeTimer = null;
  window.addEventListener('resize', () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(() => { if (lastBuckets && !$('view-detail').hidden) drawChart(lastBuckets); }, 150);
  });
  state.key = sessionStorage.getItem(KEY_STORAGE);
  route();
}

init();
