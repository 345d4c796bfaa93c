// The human review page: claim the next item (a lease keeps it yours), see what the model's
// policy lets you see (the image; the model's suggestion under assist and partial), decide.
'use strict';

const $ = (id) => document.getElementById(id);

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v == null || v === false) continue;
    if (k === 'class') el.className = v;
    else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v);
  }
  for (const c of children.flat()) if (c != null && c !== false) el.append(c instanceof Node ? c : String(c));
  return el;
}

function show(...nodes) { $('content').replaceChildren(...nodes); }

async function post(url, body) {
  const response = await authFetch(url, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
  const data = await response.json().catch(() => ({}));
  return { ok: response.ok, status: response.status, data };
}

async function next() {
  const reviewer = $('reviewer').value.trim();
  if (!reviewer) { show(h('div', { class: 'message error' }, 'Enter your name first: each decision is recorded with it.')); return; }
  localStorage.setItem('vigil-reviewer', reviewer);
  const { ok, data } = await post('/api/review/next', { reviewer, model: $('model').value.trim() || null });
  if (!ok) { show(h('div', { class: 'message error', id: 'result' }, data.error || 'cannot claim an item')); return; }
  if (!data.item) { show(h('div', { class: 'message', id: 'result', 'data-state': 'empty' }, 'No item waits for review.')); return; }
  await render(data.item, data.labels || [], reviewer);
}

// A tabular item's input (JSON: feature -> value, null when not measured) as a table.
async function featureTable(url) {
  const response = await authFetch(url);
  const values = await response.json().catch(() => ({}));
  return h('table', { id: 'item-features', class: 'features' }, h('tbody', {}, Object.entries(values).map(([name, v]) =>
    h('tr', { 'data-feature': name }, h('th', {}, name), h('td', {}, v == null ? 'not measured' : String(v))))));
}

// An image's address: as is, or fetched with the token when the monitor checks them.
async function imageSource(url) {
  if (!token()) return url;
  const response = await authFetch(url);
  return response.ok ? URL.createObjectURL(await response.blob()) : url;
}

async function render(item, labels, reviewer) {
  const image = !item.input_url
    ? h('div', { class: 'message small' }, 'The input was not carried with this item.')
    : item.content_type === 'application/json'
      ? await featureTable(item.input_url)
      : h('img', { class: 'review-image', id: 'item-image', src: await imageSource(item.input_url), alt: `input of ${item.prediction_id}` });
  const panel = item.reviews_required > 1
    ? h('p', { id: 'panel', class: 'muted' }, `${item.reviews_required} people decide this item independently; the majority counts.`)
    : null;
  const suggestion = item.suggestion
    ? h('p', { id: 'suggestion', 'data-label': item.suggestion }, 'Model suggests ', h('strong', {}, item.suggestion),
        item.score == null ? '' : ` (score ${item.score.toFixed(3)})`)
    : h('p', { id: 'suggestion', class: 'muted' }, 'The model\'s answer is not shown under this policy.');
  const buttons = labels.map((label) => h('button', {
    type: 'button', class: 'decide', 'data-label': label,
    onclick: () => submit(item.prediction_id, label, reviewer),
  }, label));
  show(h('div', { class: 'panel review-item', id: 'item', 'data-item': item.prediction_id },
    h('h2', {}, `${item.model_name} v${item.model_version}`),
    h('p', { class: 'muted' }, `station ${item.station_id || '—'} · part ${item.part_id || '—'} · queued ${item.created_at}`),
    h('p', { id: 'reason' }, `${item.policy}: ${item.reason}`), panel,
    image, suggestion,
    h('div', { class: 'decisions' }, buttons),
    h('div', { id: 'result' })));
}

async function submit(id, label, reviewer) {
  const { ok, data } = await post(`/api/review/${id}`, { reviewer, label });
  const result = $('result');
  result.setAttribute('data-state', ok ? 'accepted' : 'refused');
  const awaiting = ok && !data.decided ? ` (${data.decisions} of ${data.required} reviewers have decided)` : '';
  result.textContent = ok ? `Recorded: ${label}.${awaiting}` : (data.error || 'refused');
  if (ok) for (const b of document.querySelectorAll('button.decide')) b.disabled = true;
}

const params = new URLSearchParams(location.search);
$('reviewer').value = params.get('reviewer') || localStorage.getItem('vigil-reviewer') || '';
$('model').value = params.get('model') || '';
$('next').addEventListener('click', next);
if ($('reviewer').value) next();
