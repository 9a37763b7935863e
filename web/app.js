// MedSearch web page: upload an X-ray, see the most similar ones, filter them,
// open one full size. Plain JavaScript, no build step, no external resources.
'use strict';

const TOKEN_KEY = 'medsearch.token';
const QE_TOP = 3;              // query expansion with the top 3 matches (docs/evaluation.md),
                               // unless the collection has its own default (medsearch qe)
const MAX_UPLOAD = 32 << 20;   // the server's default limit; it has the last word
const COMMON_FINDINGS = [
  'No Finding', 'Atelectasis', 'Cardiomegaly', 'Consolidation', 'Edema', 'Effusion',
  'Emphysema', 'Fibrosis', 'Hernia', 'Infiltration', 'Mass', 'Nodule',
  'Pleural_Thickening', 'Pneumonia', 'Pneumothorax', 'NORMAL', 'PNEUMONIA', 'COVID-19',
];

const $ = (id) => document.getElementById(id);
const el = (tag, cls, text) => {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined && text !== null) e.textContent = String(text);
  return e;
};

const state = {
  token: sessionStorage.getItem(TOKEN_KEY) || '',
  query: null,          // {kind:'file', file, name} | {kind:'id', id, name}
  findings: [],
  controller: null,     // AbortController of the search in flight
  objectUrls: [],       // blob: URLs of the current grid, revoked on re-render
  knownFindings: new Set(COMMON_FINDINGS),
  results: [],
  qeTop: QE_TOP,        // neighbours the query-expansion toggle uses
  qeTouched: false,     // the user set the toggle: the collection's default no longer moves it
  writes: false,        // the server takes writes (it has a token): details can be edited
  region: '',           // the part of the query to search with ('x,y,w,h', pixels or %), '' = all of it
  qe: 0,                // the neighbours the shown results' scores were expanded with
  marks: new Map(),     // relevance feedback: image id -> {kind: 'like' | 'unlike', r, thumb}, in the order marked
  applied: { like: [], unlike: [] }, // the marks the shown results were searched with; null: none shown
  badMark: 0,           // a marked image the server did not find (404), flagged in the bar
};

// ---------- API ----------

class ApiError extends Error {
  constructor(status, message, retryAfter) {
    super(message);
    this.status = status;
    this.retryAfter = retryAfter;
  }
}

// The API's paths ('/api/search', and the image_url and thumbnail_url of its
// replies) start at the server's root. The page asks for them relative to
// itself instead, so that it also works behind a reverse proxy that serves
// MedSearch under a prefix (https://host/medsearch/ -> http://server/).
function local(path) {
  return path.startsWith('/') ? path.slice(1) : path;
}

async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  if (state.token) headers.set('Authorization', 'Bearer ' + state.token);
  let res;
  try {
    res = await fetch(local(path), { ...options, headers });
  } catch (e) {
    if (e.name === 'AbortError') throw e;
    throw new ApiError(0, 'The server cannot be reached. Is medsearch serve still running?');
  }
  if (!res.ok) {
    let message = `The server answered ${res.status} ${res.statusText}.`;
    try {
      const body = await res.json();
      if (body && body.error && body.error.message) message = body.error.message;
    } catch (_) { /* not JSON: keep the status line */ }
    throw new ApiError(res.status, message, res.headers.get('Retry-After'));
  }
  return res;
}

function explain(err) {
  if (err.status === 401) return 'This server needs an access token: ' + err.message + '. Use "Access token" at the top right.';
  if (err.status === 413) return 'The image is too large for this server: ' + err.message;
  if (err.status === 415) return 'Unsupported file: ' + err.message + '. Use a PNG, JPEG, JPEG 2000, TIFF, WebP, HEIC, AVIF, GIF or DICOM X-ray.';
  if (err.status === 429 || err.status === 503) {
    return 'The server is busy (' + err.message + '). Try again in ' + (err.retryAfter || 'a few') + ' s.';
  }
  if (err.status === 422) return 'Filter not accepted: ' + err.message;
  if ((err.status === 400 || err.status === 404) && /^(like|unlike): |marked (like|unlike)/.test(err.message)) {
    return `Cannot search with your marks: ${err.message}. Remove the mark in question, or clear the marks, and refine again.`;
  }
  if (err.status === 400 && state.query && state.query.kind === 'file') {
    return `Cannot search with "${state.query.name}": ${err.message}.`;
  }
  return err.message;
}

// Image URLs: with a token the bytes are fetched with the Authorization
// header and shown from a blob: URL; without one the browser loads and
// caches them itself (the server sends ETags).
async function imageUrl(path, signal) {
  if (!state.token) return local(path);
  const res = await api(path, { signal });
  const url = URL.createObjectURL(await res.blob());
  state.objectUrls.push(url);
  return url;
}

// ---------- status, errors ----------

function setStatus(html, loading) {
  const s = $('status');
  s.replaceChildren();
  if (loading) s.append(el('span', 'spinner'));
  if (html) s.append(html);
}

function showError(message) {
  const e = $('error');
  e.textContent = message || '';
  e.hidden = !message;
}

// ---------- token ----------

function setupToken() {
  const panel = $('token-panel');
  const toggle = $('token-toggle');
  const input = $('token-input');
  const refresh = () => { toggle.textContent = state.token ? 'Token set' : 'Access token'; };
  const open = (show) => {
    panel.hidden = !show;
    toggle.setAttribute('aria-expanded', String(show));
    if (show) input.focus();
  };
  toggle.addEventListener('click', () => open(panel.hidden));
  panel.addEventListener('submit', (ev) => {
    ev.preventDefault();
    state.token = input.value.trim();
    if (state.token) sessionStorage.setItem(TOKEN_KEY, state.token);
    else sessionStorage.removeItem(TOKEN_KEY);
    input.value = '';
    refresh();
    open(false);
    loadCollectionInfo();
    if (state.query) runSearch();
  });
  $('token-clear').addEventListener('click', () => {
    state.token = '';
    sessionStorage.removeItem(TOKEN_KEY);
    input.value = '';
    refresh();
  });
  refresh();
  return open;
}

// The collection's own query-expansion default (medsearch qe) sets the
// toggle's initial state and its number of neighbours; every search then
// sends qe explicitly, so what the toggle shows is what runs.
function applySearchDefaults(search) {
  const qe = search && Number.isInteger(search.qe) ? search.qe : 0;
  if (qe > 0) state.qeTop = qe;
  $('qe-hint').textContent = `(re-query with the top ${state.qeTop} matches${qe > 0 ? ', this collection\'s default' : ''})`;
  if (!state.qeTouched) $('qe-toggle').checked = qe > 0;
}

async function loadCollectionInfo(openToken) {
  const info = $('collection-info');
  try {
    const health = await (await api('/api/health')).json();
    state.writes = !!(health.auth && health.auth.writes);
    if (health.auth && health.auth.reads && !state.token) {
      info.textContent = 'Protected server: a token is needed';
      if (openToken) openToken(true);
      return;
    }
    const st = await (await api('/api/stats')).json();
    // The identity is "file.onnx:sha256:dim:output": the file name says enough.
    const model = String(st.model || 'model').split(':')[0].split('/').pop().replace(/\.onnx$/i, '');
    info.textContent = `${Number(st.images).toLocaleString()} images · ${model} (${st.dim}-d) · ${st.index && st.index.kind}`;
    applySearchDefaults(st.search);
  } catch (err) {
    info.textContent = err.status === 401 ? 'Token needed' : 'Collection unavailable';
  }
}

// ---------- query ----------

// What the browser can show itself; anything else (DICOM, TIFF, JPEG 2000, HEIC) is shown as
// the server renders it (POST /api/preview).
const BROWSER_SHOWS = (file) => /^image\/(png|jpeg|webp|avif|gif)$/.test(file.type) || /\.(png|jpe?g|webp|avif|gif)$/i.test(file.name);
// Worth sending: the server decides by content, so a DICOM without an
// extension (as archives name them) goes too; a file that is clearly
// something else is stopped here with a clear message.
const MAY_BE_XRAY = (file) => BROWSER_SHOWS(file) ||
  /^(image\/(tiff|jp2|j2c|heic|heif)|application\/dicom)$/.test(file.type) ||
  /\.(tiff?|jp2|j2k|j2c|heic|heif|dcm|dicom)$/i.test(file.name) ||
  (!file.type && !/\.[a-z0-9]{1,5}$/i.test(file.name));

// rendered: the server's rendering even of a PNG or JPEG (one the browser
// failed to decode, such as a lossless or 12-bit JPEG).
async function showQueryPreview(file, rendered = false) {
  const preview = $('query-preview');
  if (preview.dataset.url) URL.revokeObjectURL(preview.dataset.url);
  delete preview.dataset.url;
  preview.alt = 'Query image ' + file.name;
  preview.hidden = false;
  preview.dataset.rendered = rendered || !BROWSER_SHOWS(file) ? '1' : '';
  let blob = file;
  if (preview.dataset.rendered) {
    preview.removeAttribute('src');
    try {
      const res = await api('/api/preview?size=512', { method: 'POST', body: file,
        headers: { 'Content-Type': 'application/octet-stream' } });
      blob = await res.blob();
    } catch (_) {
      // Not an image the server reads either: back to the prompt (the
      // search reports what is wrong with the file).
      if (state.query && state.query.file === file) {
        preview.hidden = true;
        $('drop-empty').hidden = false;
      }
      return;
    }
    if (!state.query || state.query.file !== file) return; // another query since
  }
  const url = URL.createObjectURL(blob);
  preview.dataset.url = url;
  preview.src = url;
}

function acceptFile(file) {
  if (!file) return;
  if (!MAY_BE_XRAY(file)) {
    showError(`"${file.name}" is not a PNG, JPEG, JPEG 2000, TIFF, WebP, HEIC, AVIF, GIF or DICOM image.`);
    return;
  }
  if (file.size > MAX_UPLOAD) {
    showError(`"${file.name}" is ${(file.size / 1048576).toFixed(1)} MB, over the ${MAX_UPLOAD >> 20} MB upload limit.`);
    return;
  }
  state.query = { kind: 'file', file, name: file.name };
  setRegion('');
  resetFeedback();
  showQueryPreview(file);
  $('drop-empty').hidden = true;
  $('query-caption').textContent = `${file.name} · ${(file.size / 1024).toFixed(0)} KB`;
  runSearch();
}

// marks: the feedback to search with ({like, unlike} ids, from a link); a
// new query otherwise starts without any.
async function queryById(id, name, regionText = '', marks = null) {
  state.query = { kind: 'id', id, name };
  setRegion(regionText);
  resetFeedback(marks);
  const preview = $('query-preview');
  $('drop-empty').hidden = true;
  preview.hidden = false;
  preview.alt = 'Query: stored image ' + id;
  $('query-caption').textContent = `Stored image #${id}${name ? ' · ' + name : ''} (itself excluded)`;
  try {
    preview.src = await imageUrl(`/api/images/${id}/thumbnail`);
  } catch (_) { /* the search reports errors */ }
  runSearch();
}

function setupDropzone() {
  const zone = $('dropzone');
  // A PNG or JPEG the browser cannot decode itself: the server's rendering;
  // what the server cannot render either (not an image after all): back to
  // the prompt.
  $('query-preview').addEventListener('error', () => {
    const preview = $('query-preview');
    if (!preview.dataset.rendered && state.query && state.query.kind === 'file') {
      showQueryPreview(state.query.file, true);
      return;
    }
    preview.hidden = true;
    $('region-row').hidden = true;
    $('drop-empty').hidden = false;
  });
  const input = $('file-input');
  // The click that ends a drawn region is not a request for another file.
  zone.addEventListener('click', () => {
    if (!region.drawing && performance.now() - region.drewAt > 400) input.click();
  });
  zone.addEventListener('keydown', (ev) => {
    if (region.drawing && ev.key === 'Escape') { ev.preventDefault(); setDrawing(false); return; }
    if (ev.key === 'Enter' || ev.key === ' ') { ev.preventDefault(); input.click(); }
  });
  input.addEventListener('change', () => { acceptFile(input.files[0]); input.value = ''; });
  ['dragenter', 'dragover'].forEach((t) => zone.addEventListener(t, (ev) => {
    ev.preventDefault();
    zone.classList.add('dragover');
  }));
  ['dragleave', 'drop'].forEach((t) => zone.addEventListener(t, () => zone.classList.remove('dragover')));
  zone.addEventListener('drop', (ev) => {
    ev.preventDefault();
    acceptFile(ev.dataTransfer.files[0]);
  });
  // A file dropped anywhere else on the page is a query too, not a navigation.
  window.addEventListener('dragover', (ev) => ev.preventDefault());
  window.addEventListener('drop', (ev) => {
    ev.preventDefault();
    if (ev.dataTransfer && ev.dataTransfer.files[0]) acceptFile(ev.dataTransfer.files[0]);
  });
}

// ---------- filters ----------

function params() {
  const p = new URLSearchParams();
  p.set('k', $('k-select').value);
  p.set('qe', $('qe-toggle').checked ? String(state.qeTop) : '0');
  if (state.findings.length) p.set('labels', state.findings.join('|'));
  if ($('filter-sex').value) p.set('sex', $('filter-sex').value);
  if ($('filter-view').value) p.set('view', $('filter-view').value);
  const min = $('filter-age-min').value.trim();
  const max = $('filter-age-max').value.trim();
  if (min) p.set('age_min', min);
  if (max) p.set('age_max', max);
  if ($('filter-one-per-patient').checked) p.set('one_per_patient', '1');
  if (state.region) p.set('region', state.region);
  const { like, unlike } = markLists();
  if (like.length) p.set('like', like.join(','));
  if (unlike.length) p.set('unlike', unlike.join(','));
  return p;
}

function renderChips() {
  const list = $('finding-chips');
  list.replaceChildren();
  for (const f of state.findings) {
    const li = el('li', 'chip', f);
    const rm = el('button', null, '×');
    rm.type = 'button';
    rm.setAttribute('aria-label', 'Remove finding ' + f);
    rm.addEventListener('click', () => {
      state.findings = state.findings.filter((x) => x !== f);
      renderChips();
      runSearch();
      $('filter-findings').focus();
    });
    li.append(rm);
    list.append(li);
  }
}

function addFinding(text) {
  const f = text.trim();
  if (!f || state.findings.some((x) => x.toLowerCase() === f.toLowerCase())) return;
  state.findings.push(f);
  renderChips();
  runSearch();
}

function refreshFindingList() {
  const dl = $('findings-list');
  dl.replaceChildren();
  [...state.knownFindings].sort((a, b) => a.localeCompare(b)).forEach((f) => {
    const o = document.createElement('option');
    o.value = f;
    dl.append(o);
  });
}

function setupFilters() {
  const input = $('filter-findings');
  input.addEventListener('keydown', (ev) => {
    if (ev.key === 'Enter' || ev.key === ',') {
      ev.preventDefault();
      addFinding(input.value);
      input.value = '';
    } else if (ev.key === 'Backspace' && !input.value && state.findings.length) {
      state.findings.pop();
      renderChips();
      runSearch();
    }
  });
  // Picking a suggestion from the list fires 'change' with an exact match.
  input.addEventListener('change', () => {
    if (state.knownFindings.has(input.value)) {
      addFinding(input.value);
      input.value = '';
    }
  });
  $('qe-toggle').addEventListener('change', () => { state.qeTouched = true; });
  for (const id of ['k-select', 'qe-toggle', 'filter-sex', 'filter-view', 'filter-one-per-patient']) {
    $(id).addEventListener('change', runSearch);
  }
  let timer = 0;
  for (const id of ['filter-age-min', 'filter-age-max']) {
    $(id).addEventListener('input', () => {
      clearTimeout(timer);
      timer = setTimeout(runSearch, 450);
    });
  }
  $('clear-filters').addEventListener('click', () => {
    state.findings = [];
    renderChips();
    $('filter-sex').value = '';
    $('filter-view').value = '';
    $('filter-age-min').value = '';
    $('filter-age-max').value = '';
    $('filter-one-per-patient').checked = false;
    runSearch();
  });
  refreshFindingList();
}

// ---------- region: search with part of the query image ----------

// The region is sent as the server reads it (docs/api.md, "region"): drawn on
// the preview it is in percentages of the image as shown, which hold whatever
// the preview's resolution (the server's rendering of a DICOM is smaller than
// the file). A typed region may also be in pixels.
const region = { drawing: false, start: null, drewAt: 0 };

// Where the preview's picture lies inside its element (object-fit: contain
// leaves bars), in client pixels; null before it has loaded.
function pictureBox() {
  const img = $('query-preview');
  const r = img.getBoundingClientRect();
  const nw = img.naturalWidth, nh = img.naturalHeight;
  if (img.hidden || !nw || !nh || !r.width || !r.height) return null;
  const s = Math.min(r.width / nw, r.height / nh);
  const w = nw * s, h = nh * s;
  return { left: r.left + (r.width - w) / 2, top: r.top + (r.height - h) / 2, width: w, height: h };
}

// Percentages of a region made only of percentages, else null (a pixel
// region cannot be drawn without the full image's size).
function regionPercents(text) {
  const parts = text.split(',').map((v) => v.trim());
  if (parts.length !== 4 || !parts.every((v) => /^\d+(\.\d+)?%$/.test(v))) return null;
  return parts.map((v) => parseFloat(v));
}

// Lays element e over the part pct (x, y, width, height in % of the
// picture) of the preview; hides it when there is no such part to cover.
function placeOverPicture(e, pct) {
  const pic = pictureBox();
  e.hidden = !pct || !pic;
  if (e.hidden) return;
  const zone = $('dropzone').getBoundingClientRect();
  e.style.left = (pic.left - zone.left + pic.width * pct[0] / 100) + 'px';
  e.style.top = (pic.top - zone.top + pic.height * pct[1] / 100) + 'px';
  e.style.width = (pic.width * pct[2] / 100) + 'px';
  e.style.height = (pic.height * pct[3] / 100) + 'px';
}

function drawRegionBox(pct) {
  placeOverPicture($('region-box'), pct);
}

function setRegion(text) {
  state.region = text;
  $('region-input').value = text;
  $('region-clear').hidden = !text;
  drawRegionBox(regionPercents(text));
}

function setDrawing(on) {
  region.drawing = on;
  region.start = null;
  $('dropzone').classList.toggle('drawing', on);
  $('region-draw').setAttribute('aria-pressed', on ? 'true' : 'false');
  $('region-draw').textContent = on ? 'Drag over the image…' : 'Select region';
  if (!on) drawRegionBox(regionPercents(state.region));
}

// A point of the picture in hundredths of a percent (0..10000), clamped to it.
function toHundredths(pic, x, y) {
  const f = (v) => Math.max(0, Math.min(10000, Math.round(v * 10000)));
  return [f((x - pic.left) / pic.width), f((y - pic.top) / pic.height)];
}

function setupRegion() {
  const zone = $('dropzone');
  $('region-draw').addEventListener('click', () => setDrawing(!region.drawing));
  $('region-clear').addEventListener('click', () => { setRegion(''); runSearch(); });
  $('region-input').addEventListener('change', () => {
    setRegion($('region-input').value.trim());
    runSearch();
  });
  zone.addEventListener('pointerdown', (ev) => {
    const pic = pictureBox();
    if (!region.drawing || !pic || ev.button !== 0) return;
    ev.preventDefault();
    zone.setPointerCapture(ev.pointerId);
    region.start = toHundredths(pic, ev.clientX, ev.clientY);
  });
  const rectTo = (ev) => {
    const pic = pictureBox();
    if (!pic || !region.start) return null;
    const [x1, y1] = toHundredths(pic, ev.clientX, ev.clientY);
    const [x0, y0] = region.start;
    return [Math.min(x0, x1), Math.min(y0, y1), Math.abs(x1 - x0), Math.abs(y1 - y0)];
  };
  zone.addEventListener('pointermove', (ev) => {
    const r = rectTo(ev);
    if (r) drawRegionBox(r.map((v) => v / 100));
  });
  zone.addEventListener('pointerup', (ev) => {
    const r = rectTo(ev);
    if (region.start) region.drewAt = performance.now();
    setDrawing(false);
    // A click, or a sliver under 2% of a side, is not a region.
    if (!r || r[2] < 200 || r[3] < 200) return;
    setRegion(r.map((v) => (v / 100).toFixed(2) + '%').join(','));
    runSearch();
  });
  window.addEventListener('resize', () => {
    drawRegionBox(regionPercents(state.region));
    placeQueryHeat();
  });
  $('query-preview').draggable = false; // a drag draws the region instead
  $('query-preview').addEventListener('load', () => {
    $('region-row').hidden = false;
    drawRegionBox(regionPercents(state.region));
    placeQueryHeat();
  });
}

// ---------- search and results ----------

async function runSearch() {
  writeLink();
  if (!state.query) return;
  alike.cache.clear(); // the maps answer the previous search's query
  setAlike(false);
  if (state.controller) state.controller.abort();
  const controller = new AbortController();
  state.controller = controller;
  showError('');
  $('empty').hidden = true;
  $('grid').classList.add('loading');
  $('grid').setAttribute('aria-busy', 'true');
  setStatus(document.createTextNode('Searching…'), true);
  try {
    let res;
    if (state.query.kind === 'file') {
      const form = new FormData();
      form.append('image', state.query.file, state.query.name);
      res = await api('/api/search?' + params(), { method: 'POST', body: form, signal: controller.signal });
    } else {
      res = await api(`/api/images/${state.query.id}/similar?` + params(), { signal: controller.signal });
    }
    const data = await res.json();
    if (controller !== state.controller) return;
    renderResults(data);
  } catch (err) {
    if (err.name === 'AbortError') return;
    setStatus(null, false);
    // The old results answer another question: do not leave them on screen.
    $('grid').replaceChildren();
    showError(explain(err));
    // The marks stay, so that the one the server refused can be removed;
    // one it did not find is flagged in the bar.
    const missing = err.status === 404 && /id (\d+) \(marked (like|unlike)\)/.exec(err.message);
    state.badMark = missing ? Number(missing[1]) : 0;
    state.applied = null;
    renderFeedbackBar();
  } finally {
    if (controller === state.controller) {
      $('grid').classList.remove('loading');
      $('grid').removeAttribute('aria-busy');
    }
  }
}

function describe(r) {
  const bits = [];
  if (r.patient_id) bits.push('Patient ' + r.patient_id);
  if (r.age !== null && r.age !== undefined) bits.push(r.age + ' y');
  if (r.sex) bits.push(r.sex === 'F' ? 'Female' : r.sex === 'M' ? 'Male' : r.sex);
  if (r.view) bits.push(r.view);
  return bits;
}

function findingTags(labels, cls) {
  const ul = el('ul', cls);
  ul.setAttribute('aria-label', 'Findings');
  for (const l of labels || []) {
    const normal = /^(no finding|normal)$/i.test(l);
    ul.append(el('li', normal ? 'tag normal' : 'tag', l));
  }
  if (!labels || !labels.length) ul.append(el('li', 'tag', 'no labels'));
  return ul;
}

// A card opens its image in the viewer (click, Enter or Space on it); its
// two feedback buttons are buttons of their own inside it, so the card is a
// focusable list item rather than a button (a button cannot hold buttons).
function renderCard(r) {
  const li = el('li', 'card');
  li.tabIndex = 0;
  li.dataset.id = r.id;
  li.dataset.name = r.original_name || '';
  const score = Number(r.score);
  li.dataset.label = `Result ${r.rank}: image ${r.id}, similarity ${score.toFixed(3)}` +
    (r.labels && r.labels.length ? ', findings ' + r.labels.join(', ') : '');

  const thumb = el('div', 'thumb');
  const img = el('img');
  img.alt = `Thumbnail of image ${r.id}`;
  img.loading = 'lazy';
  img.decoding = 'async';
  const badge = el('span', 'mark-badge');
  badge.setAttribute('aria-hidden', 'true');
  thumb.append(img, el('span', 'rank', '#' + r.rank), badge);
  imageUrl(r.thumbnail_url).then((u) => { img.src = u; }).catch(() => { img.alt = 'Thumbnail unavailable'; });

  const body = el('div', 'card-body');
  const top = el('div', 'card-top');
  top.append(el('span', 'card-id', 'ID ' + r.id), el('span', 'card-score', score.toFixed(3)));
  const bar = el('div', 'bar');
  bar.setAttribute('aria-hidden', 'true');
  const fill = el('span');
  fill.style.setProperty('width', (Math.max(0, Math.min(1, score)) * 100).toFixed(1) + '%');
  bar.append(fill);
  const meta = el('div', 'card-meta');
  for (const b of describe(r)) meta.append(el('span', null, b));
  body.append(top, bar, findingTags(r.labels, 'card-findings'), meta, markButtons(r));
  li.append(thumb, body);
  syncCard(li);

  const open = () => openViewer(r, li);
  // not for a press of one of its buttons, which works on its own
  li.addEventListener('click', (ev) => { if (!ev.target.closest('button')) open(); });
  li.addEventListener('keydown', (ev) => {
    if (ev.target !== li) return;
    if (ev.key === 'Enter' || ev.key === ' ') { ev.preventDefault(); open(); }
  });
  return li;
}

// "More like this" and "Not this" under a result.
function markButtons(r) {
  const div = el('div', 'card-feedback');
  for (const kind of ['like', 'unlike']) {
    const b = el('button', `mark mark-${kind}`, MARK_TEXT[kind]);
    b.type = 'button';
    b.dataset.kind = kind;
    b.setAttribute('aria-pressed', 'false');
    b.setAttribute('aria-label', `${MARK_TEXT[kind]} (image ${r.id})`);
    b.title = MARK_TITLE[kind];
    b.addEventListener('click', () => toggleMark(r, kind));
    div.append(b);
  }
  return div;
}

function renderResults(data) {
  state.objectUrls.forEach((u) => URL.revokeObjectURL(u));
  state.objectUrls = [];
  state.results = data.results || [];
  state.qe = data.qe || 0;
  const fb = data.feedback || {};
  state.applied = { like: (fb.like || []).map(Number), unlike: (fb.unlike || []).map(Number) };
  state.badMark = 0;
  renderFeedbackBar();
  const grid = $('grid');
  grid.replaceChildren(...state.results.map(renderCard));
  let learned = false;
  for (const r of state.results) {
    for (const l of r.labels || []) {
      if (!state.knownFindings.has(l)) { state.knownFindings.add(l); learned = true; }
    }
  }
  if (learned) refreshFindingList();
  const t = data.timing_ms || {};
  const strong = el('strong', null, `${state.results.length} result${state.results.length === 1 ? '' : 's'}`);
  const frag = document.createDocumentFragment();
  frag.append(strong);
  const parts = [];
  // With feedback or query expansion a score is the similarity to the moved
  // or expanded query, not to the upload. Feedback moves it first.
  const nl = state.applied.like.length, nu = state.applied.unlike.length;
  if (nl + nu) {
    parts.push(`scores against the query moved by your feedback (${markCount(nl, nu)})` +
      (data.qe > 0 ? `, then expanded with its top ${data.qe}` : ''));
  } else if (data.qe > 0) {
    parts.push(`scores against the query expanded with its top ${data.qe}`);
  }
  if (data.region) {
    const g = data.region;
    parts.push(`region ${g.width} × ${g.height} px at ${g.x}, ${g.y}`);
  }
  if (t.server !== undefined) parts.push(`${Math.round(t.server)} ms`);
  if (t.embed) parts.push(`model ${Math.round(t.embed)} ms`);
  frag.append(document.createTextNode(parts.length ? ' · ' + parts.join(' · ') : ''));
  if (!state.results.length) frag.append(document.createTextNode(' — nothing matches these filters.'));
  setStatus(frag, false);
}

// ---------- relevance feedback: marking results ----------
// Each result has "More like this" and "Not this" (in the viewer too, keys
// L and N). The marks gather in the bar above the results, and every search
// sends them (like=, unlike=): the server moves the query towards the images
// marked like and away from those marked not, and leaves the marked images
// out of the results. "Refine search" runs the search again with them; the
// marks add up over the rounds until a new query clears them. A change of
// the settings keeps them.

const FEEDBACK_MAX = 100;  // ids a list may hold (the server's limit)
const MARK_TEXT = { like: 'More like this', unlike: 'Not this' };
const MARK_TITLE = {
  like: 'Mark as like what you look for: Refine search moves the query towards it',
  unlike: 'Mark as not what you look for: Refine search moves the query away from it',
};

// The marked ids, each list in the order marked.
function markLists() {
  const like = [], unlike = [];
  for (const [id, m] of state.marks) (m.kind === 'like' ? like : unlike).push(id);
  return { like, unlike };
}

const markCount = (like, unlike) => `${like} like, ${unlike} not`;

// What the bar and the viewer keep of a result: not its rank or score,
// which belong to the search it came from.
function markedResult(r) {
  const copy = { ...r };
  delete copy.rank;
  delete copy.score;
  return copy;
}

// Marks image r as kind ('like' or 'unlike'), which clears its other mark;
// marked so already, unmarks it.
function toggleMark(r, kind) {
  const id = Number(r.id);
  const had = state.marks.get(id);
  if (had && had.kind === kind) {
    dropMark(id);
  } else {
    if (markLists()[kind].length >= FEEDBACK_MAX) {
      showError(`At most ${FEEDBACK_MAX} images can be marked "${MARK_TEXT[kind]}". Remove some marks first.`);
      return;
    }
    if (had) state.marks.delete(id); // to the end of its new list
    state.marks.set(id, { kind, r: markedResult(r), thumb: had ? had.thumb : null });
  }
  if (state.badMark === id) state.badMark = 0;
  syncMark(id);
}

// Removes id's mark (its chip's thumbnail with it).
function dropMark(id) {
  const m = state.marks.get(id);
  if (!m) return;
  if (m.thumb) m.thumb.then((u) => { if (u.startsWith('blob:')) URL.revokeObjectURL(u); }).catch(() => {});
  state.marks.delete(id);
}

// Whether the results shown were searched with marks.
const feedbackApplied = () => !!state.applied && state.applied.like.length + state.applied.unlike.length > 0;

// Removes every mark (and the flag of a missing one).
function dropAllMarks() {
  for (const id of [...state.marks.keys()]) dropMark(id);
  state.badMark = 0;
}

// Shows the marks as they are on every card, in the viewer and in the bar.
function syncAllMarks() {
  for (const card of $('grid').querySelectorAll('.card')) syncCard(card);
  syncViewerMarks();
  renderFeedbackBar();
}

// Forgets all marks (a new query); marks: {like, unlike} ids to start with instead.
function resetFeedback(marks = null) {
  dropAllMarks();
  state.applied = { like: [], unlike: [] };
  if (marks) {
    for (const kind of ['like', 'unlike']) {
      for (const id of marks[kind]) state.marks.set(id, { kind, r: { id }, thumb: null });
    }
  }
  syncAllMarks();
}

// Shows image id's mark on its card, in the viewer and in the bar.
function syncMark(id) {
  const card = document.querySelector(`#grid .card[data-id="${id}"]`);
  if (card) syncCard(card);
  syncViewerMarks();
  renderFeedbackBar();
}

function syncCard(card) {
  const m = state.marks.get(Number(card.dataset.id));
  const kind = m ? m.kind : '';
  card.classList.toggle('marked-like', kind === 'like');
  card.classList.toggle('marked-unlike', kind === 'unlike');
  for (const b of card.querySelectorAll('.mark')) b.setAttribute('aria-pressed', String(b.dataset.kind === kind));
  const badge = card.querySelector('.mark-badge');
  if (badge) badge.textContent = kind === 'like' ? '✓ Like' : kind === 'unlike' ? '✕ Not' : '';
  card.setAttribute('aria-label', card.dataset.label + (kind ? `, marked ${MARK_TEXT[kind].toLowerCase()}` : ''));
}

function syncViewerMarks() {
  const m = viewer.result ? state.marks.get(Number(viewer.result.id)) : null;
  $('v-like').setAttribute('aria-pressed', String(!!m && m.kind === 'like'));
  $('v-unlike').setAttribute('aria-pressed', String(!!m && m.kind === 'unlike'));
}

// A marked image's thumbnail for its chip (with a token: fetched once, as a blob: URL).
function markThumb(id, m) {
  const path = `/api/images/${id}/thumbnail`;
  if (!state.token) return Promise.resolve(local(path));
  if (!m.thumb) {
    m.thumb = api(path).then(async (res) => URL.createObjectURL(await res.blob()));
    m.thumb.catch(() => { m.thumb = null; });
  }
  return m.thumb;
}

const sameIds = (a, b) => a.length === b.length && [...a].sort((x, y) => x - y).join() === [...b].sort((x, y) => x - y).join();

// The bar above the results: how many marks, a chip for each, Refine and
// Clear. Shown while there are marks, or while the results shown were
// searched with some (then Refine searches without them).
function renderFeedbackBar() {
  const { like, unlike } = markLists();
  const applied = state.applied;
  const bar = $('feedback');
  const show = state.marks.size > 0 || feedbackApplied();
  if (!show && !bar.hidden && bar.contains(document.activeElement)) $('results').focus();
  bar.hidden = !show;
  $('feedback-count').textContent = markCount(like.length, unlike.length);
  let note = 'Not applied yet: Refine search to search with them.';
  if (applied && sameIds(like, applied.like) && sameIds(unlike, applied.unlike)) note = 'Applied to these results.';
  else if (!state.marks.size) note = 'No marks left: Refine search to search without them.';
  $('feedback-note').textContent = note;
  const list = $('feedback-chips');
  list.replaceChildren();
  for (const [id, m] of state.marks) {
    const missing = id === state.badMark;
    const li = el('li', `fchip ${m.kind}${missing ? ' missing' : ''}`);
    li.dataset.id = id;
    li.dataset.kind = m.kind;
    const what = `image ${id}, marked ${MARK_TEXT[m.kind].toLowerCase()}${missing ? ', not in the collection' : ''}`;
    const open = el('button', 'fchip-open');
    open.type = 'button';
    open.title = `#${id}${m.r.labels && m.r.labels.length ? ' · ' + m.r.labels.join(', ') : ''} · ` +
      `${MARK_TEXT[m.kind]}${missing ? ' · not in the collection' : ''} (open it)`;
    open.setAttribute('aria-label', `Open ${what}`);
    const img = el('img');
    img.alt = '';
    markThumb(id, m).then((u) => { img.src = u; }).catch(() => {});
    open.append(img, el('span', 'fchip-kind', m.kind === 'like' ? '+' : '−'), el('span', 'fchip-id', '#' + id));
    open.addEventListener('click', () => openViewer(m.r, open));
    const rm = el('button', 'fchip-remove', '×');
    rm.type = 'button';
    rm.title = 'Remove this mark';
    rm.setAttribute('aria-label', `Remove the mark of ${what}`);
    rm.addEventListener('click', () => {
      const ids = [...state.marks.keys()];
      const next = ids[ids.indexOf(id) + 1] || ids[ids.indexOf(id) - 1];
      dropMark(id);
      if (state.badMark === id) state.badMark = 0;
      syncMark(id);
      const chip = next && list.querySelector(`.fchip[data-id="${next}"] .fchip-remove`);
      if (chip) chip.focus();
      else if (!bar.hidden) $('feedback-refine').focus();
    });
    li.append(open, rm);
    list.append(li);
  }
}

function setupFeedback() {
  $('feedback-refine').addEventListener('click', () => runSearch());
  $('feedback-clear').addEventListener('click', () => {
    const refined = feedbackApplied();
    dropAllMarks();
    syncAllMarks();
    // results searched with the marks: back to those of the query alone
    if (refined) runSearch();
    $('results').focus();
  });
  $('v-like').addEventListener('click', () => { if (viewer.result) toggleMark(viewer.result, 'like'); });
  $('v-unlike').addEventListener('click', () => { if (viewer.result) toggleMark(viewer.result, 'unlike'); });
}

// ---------- viewer: zoom, pan, window/level on a canvas ----------

const viewer = {
  result: null,
  opener: null,
  gray: null,           // Uint8ClampedArray, one byte per pixel
  w: 0, h: 0,
  work: null,           // canvas holding the windowed image at full size
  scale: 1, ox: 0, oy: 0,
  width: 256, level: 128, invert: false,
  drag: null,
  pending: false,
  controller: null,
  info: null,           // the image's metadata document (GET .../metadata)
  etag: null,           // its ETag: sent as If-Match when saving an edit
  copies: null,         // {of: id, list}: the other images that are this picture again
};

function viewerLut() {
  const lut = new Uint8ClampedArray(256);
  const lo = viewer.level - viewer.width / 2;
  for (let v = 0; v < 256; v++) {
    let o = ((v - lo) / viewer.width) * 255;
    o = Math.max(0, Math.min(255, o));
    lut[v] = viewer.invert ? 255 - o : o;
  }
  return lut;
}

function applyWindow() {
  if (!viewer.gray) return;
  const ctx = viewer.work.getContext('2d');
  const out = ctx.createImageData(viewer.w, viewer.h);
  const lut = viewerLut();
  const g = viewer.gray;
  const d = out.data;
  for (let i = 0, j = 0; i < g.length; i++, j += 4) {
    const v = lut[g[i]];
    d[j] = v; d[j + 1] = v; d[j + 2] = v; d[j + 3] = 255;
  }
  ctx.putImageData(out, 0, 0);
}

function drawViewer() {
  viewer.pending = false;
  const canvas = $('v-canvas');
  const dpr = window.devicePixelRatio || 1;
  const cw = Math.max(1, Math.round(canvas.clientWidth * dpr));
  const ch = Math.max(1, Math.round(canvas.clientHeight * dpr));
  if (canvas.width !== cw || canvas.height !== ch) { canvas.width = cw; canvas.height = ch; }
  const ctx = canvas.getContext('2d');
  ctx.setTransform(1, 0, 0, 1, 0, 0);
  ctx.fillStyle = '#0b0f14';
  ctx.fillRect(0, 0, cw, ch);
  if (!viewer.gray) return;
  ctx.imageSmoothingEnabled = viewer.scale < 2;
  ctx.setTransform(viewer.scale * dpr, 0, 0, viewer.scale * dpr, viewer.ox * dpr, viewer.oy * dpr);
  ctx.drawImage(viewer.work, 0, 0);
  if (alike.heat) {
    // the result's cells, in the image's transform, smoothed up to the image's size
    ctx.imageSmoothingEnabled = true;
    ctx.drawImage(alike.heat, 0, 0, viewer.w, viewer.h);
  }
  $('v-readout').textContent = `W ${Math.round(viewer.width)} · L ${Math.round(viewer.level)} · ${Math.round(viewer.scale * 100)}%`;
}

function scheduleDraw() {
  if (!viewer.pending) {
    viewer.pending = true;
    requestAnimationFrame(drawViewer);
  }
}

function fitViewer() {
  const canvas = $('v-canvas');
  const cw = canvas.clientWidth;
  const ch = canvas.clientHeight;
  if (!viewer.w || !cw || !ch) return;
  viewer.scale = Math.min(cw / viewer.w, ch / viewer.h) * 0.96;
  viewer.ox = (cw - viewer.w * viewer.scale) / 2;
  viewer.oy = (ch - viewer.h * viewer.scale) / 2;
}

function resetViewer() {
  viewer.width = 256;
  viewer.level = 128;
  fitViewer();
  applyWindow();
  scheduleDraw();
}

function zoomAt(factor, cx, cy) {
  const s = Math.max(0.05, Math.min(40, viewer.scale * factor));
  const f = s / viewer.scale;
  viewer.ox = cx - (cx - viewer.ox) * f;
  viewer.oy = cy - (cy - viewer.oy) * f;
  viewer.scale = s;
  scheduleDraw();
}

function zoomCenter(factor) {
  const c = $('v-canvas');
  zoomAt(factor, c.clientWidth / 2, c.clientHeight / 2);
}

function setupViewerInput() {
  const canvas = $('v-canvas');
  canvas.addEventListener('contextmenu', (ev) => ev.preventDefault());
  canvas.addEventListener('pointerdown', (ev) => {
    canvas.setPointerCapture(ev.pointerId);
    const mode = ev.button === 2 ? 'zoom' : (ev.button === 1 || ev.shiftKey) ? 'pan' : 'window';
    const rect = canvas.getBoundingClientRect();
    viewer.drag = { mode, x: ev.clientX, y: ev.clientY, cx: ev.clientX - rect.left, cy: ev.clientY - rect.top };
    if (mode === 'pan') canvas.classList.add('panning');
  });
  canvas.addEventListener('pointermove', (ev) => {
    const d = viewer.drag;
    if (!d) return;
    const dx = ev.clientX - d.x;
    const dy = ev.clientY - d.y;
    d.x = ev.clientX;
    d.y = ev.clientY;
    if (d.mode === 'window') {
      // Radiology convention: horizontal drag = window width, vertical = level.
      viewer.width = Math.max(1, Math.min(512, viewer.width + dx));
      viewer.level = Math.max(-128, Math.min(384, viewer.level - dy));
      applyWindow();
    } else if (d.mode === 'zoom') {
      zoomAt(Math.exp(-dy * 0.01), d.cx, d.cy);
    } else {
      viewer.ox += dx;
      viewer.oy += dy;
    }
    scheduleDraw();
  });
  const end = () => { viewer.drag = null; canvas.classList.remove('panning'); };
  canvas.addEventListener('pointerup', end);
  canvas.addEventListener('pointercancel', end);
  canvas.addEventListener('wheel', (ev) => {
    ev.preventDefault();
    const rect = canvas.getBoundingClientRect();
    zoomAt(Math.exp(-ev.deltaY * 0.0015), ev.clientX - rect.left, ev.clientY - rect.top);
  }, { passive: false });
  canvas.addEventListener('dblclick', resetViewer);

  $('v-zoom-in').addEventListener('click', () => zoomCenter(1.25));
  $('v-zoom-out').addEventListener('click', () => zoomCenter(0.8));
  $('v-reset').addEventListener('click', resetViewer);
  $('v-invert').addEventListener('click', () => {
    viewer.invert = !viewer.invert;
    $('v-invert').setAttribute('aria-pressed', String(viewer.invert));
    applyWindow();
    scheduleDraw();
  });
  $('v-alike').addEventListener('click', () => setAlike(!alike.on));
  $('v-close').addEventListener('click', closeViewer);
  $('v-prev').addEventListener('click', () => stepViewer(-1));
  $('v-next').addEventListener('click', () => stepViewer(1));
  $('v-similar').addEventListener('click', () => {
    const r = viewer.result;
    closeViewer();
    if (r) queryById(r.id, r.original_name);
  });
  window.addEventListener('resize', () => { if (!$('viewer').hidden) scheduleDraw(); });

  $('viewer').addEventListener('keydown', (ev) => {
    const step = 40;
    if (ev.key === 'Escape') {
      ev.preventDefault();
      if ($('v-edit-form')) closeMetaEditor(viewer.result); else closeViewer();
      return;
    }
    if (ev.key === 'Tab') { trapFocus(ev); return; }
    if (/^(BUTTON|INPUT|SELECT)$/.test(ev.target.tagName)) return;
    // not while typing in the details form: that would leave the edit
    if ((ev.key === 'PageDown' || ev.key === 'PageUp') && !/^(INPUT|SELECT|TEXTAREA)$/.test(ev.target.tagName)) {
      ev.preventDefault();
      stepViewer(ev.key === 'PageDown' ? 1 : -1);
      return;
    }
    const keys = {
      ArrowLeft: () => { viewer.ox += step; }, ArrowRight: () => { viewer.ox -= step; },
      ArrowUp: () => { viewer.oy += step; }, ArrowDown: () => { viewer.oy -= step; },
      '+': () => zoomCenter(1.25), '=': () => zoomCenter(1.25), '-': () => zoomCenter(0.8),
      r: resetViewer, R: resetViewer,
      i: () => $('v-invert').click(), I: () => $('v-invert').click(),
      a: () => $('v-alike').click(), A: () => $('v-alike').click(),
      l: () => $('v-like').click(), L: () => $('v-like').click(),
      n: () => $('v-unlike').click(), N: () => $('v-unlike').click(),
    };
    if (keys[ev.key]) { ev.preventDefault(); keys[ev.key](); scheduleDraw(); }
  });
}

function trapFocus(ev) {
  const items = [...$('viewer').querySelectorAll('button, canvas, input, select, [tabindex="0"]')].filter((e) => !e.disabled);
  if (!items.length) return;
  const first = items[0];
  const last = items[items.length - 1];
  if (ev.shiftKey && document.activeElement === first) { ev.preventDefault(); last.focus(); }
  else if (!ev.shiftKey && document.activeElement === last) { ev.preventDefault(); first.focus(); }
}

// The other images that are this picture again (GET /api/images/{id}/copies:
// re-encoded, resized, windowed differently), each opening in the viewer; a
// copy under another patient or with other findings is flagged, since it is
// a data error a researcher wants to see.
function copiesList(r, list) {
  const ul = el('ul', 'v-copies');
  for (const c of list) {
    const li = el('li');
    const open = el('button', 'btn btn-link', `#${c.id}`);
    open.type = 'button';
    open.setAttribute('aria-label', `Open image ${c.id}, a copy of this one`);
    open.addEventListener('click', () => {
      const copy = { ...c };
      delete copy.score; // its similarity to this image, not to the query
      openViewer(copy, viewer.opener);
    });
    const bits = [c.patient_id ? 'patient ' + c.patient_id : null, (c.labels || []).join(', ') || null,
      'correlation ' + Number(c.correlation).toFixed(3)].filter(Boolean);
    li.append(open, document.createTextNode(' ' + bits.join(' · ')));
    const sameLabels = (a, b) => a.length === b.length && a.every((x) => b.some((y) => y.toLowerCase() === x.toLowerCase()));
    if (r.patient_id && c.patient_id && r.patient_id !== c.patient_id) li.append(el('span', 'v-copy-flag', 'other patient'));
    if ((r.labels || []).length && (c.labels || []).length && !sameLabels(r.labels, c.labels)) li.append(el('span', 'v-copy-flag', 'other findings'));
    ul.append(li);
  }
  return ul;
}

function renderViewerMeta(r, info) {
  const dl = el('dl');
  const add = (k, v) => {
    if (v === null || v === undefined || v === '') return;
    dl.append(el('dt', null, k));
    const dd = el('dd');
    if (v instanceof Node) dd.append(v); else dd.textContent = String(v);
    dl.append(dd);
  };
  add('Image ID', r.id);
  if (r.score !== undefined) add('Similarity', Number(r.score).toFixed(3));
  add('Findings', findingTags(r.labels, 'card-findings'));
  add('Patient', r.patient_id);
  add('Age', r.age !== null && r.age !== undefined ? r.age + ' years' : null);
  add('Sex', r.sex === 'F' ? 'Female' : r.sex === 'M' ? 'Male' : r.sex);
  add('View', r.view);
  add('Study date', r.study_date);
  add('File', r.original_name);
  if (info) {
    add('Size', `${info.width} × ${info.height} px`);
    add('Format', info.mime);
    if (info.extra) for (const [k, v] of Object.entries(info.extra)) add(k, v);
  }
  if (viewer.copies && viewer.copies.of === r.id && viewer.copies.list.length) add('Also stored as', copiesList(r, viewer.copies.list));
  const parts = [dl];
  if (info && state.writes) {
    const edit = el('button', 'btn btn-dark v-edit-open', 'Edit details');
    edit.type = 'button';
    edit.id = 'v-edit';
    edit.addEventListener('click', () => openMetaEditor(r));
    parts.push(edit);
  }
  $('v-meta').replaceChildren(...parts);
}

// ---------- viewer: editing an image's details ----------
// Saved with PATCH .../metadata, only the fields changed, and the ETag the
// details were shown with as If-Match: when someone else changed the image
// meanwhile the server refuses (412) and the page shows what is stored now.

function editField(form, label, id, control) {
  const wrap = el('label', 'v-edit-field');
  wrap.htmlFor = id;
  wrap.append(el('span', null, label));
  control.id = id;
  form.append(wrap, control);
  return control;
}

function openMetaEditor(r) {
  const info = viewer.info || {};
  const form = el('form', 'v-edit');
  form.id = 'v-edit-form';
  form.setAttribute('aria-label', 'Edit the details of image ' + r.id);
  const text = (v) => { const i = el('input'); i.type = 'text'; i.value = v == null ? '' : String(v); return i; };
  const labels = editField(form, 'Findings (comma-separated, main one first)', 'v-edit-labels',
    text((info.labels || []).join(', ')));
  const patient = editField(form, 'Patient', 'v-edit-patient', text(info.patient_id));
  const age = editField(form, 'Age (years)', 'v-edit-age', text(info.age));
  age.inputMode = 'numeric';
  const sex = editField(form, 'Sex', 'v-edit-sex', el('select'));
  for (const [v, t] of [['', 'unknown'], ['F', 'Female'], ['M', 'Male']]) {
    const o = el('option', null, t);
    o.value = v;
    sex.append(o);
  }
  sex.value = info.sex || '';
  const view = editField(form, 'View', 'v-edit-view', text(info.view));
  const date = editField(form, 'Study date', 'v-edit-date', text(info.study_date));
  const problem = el('p', 'error v-edit-error');
  problem.id = 'v-edit-error';
  problem.setAttribute('role', 'alert');
  problem.hidden = true;
  const buttons = el('div', 'v-edit-buttons');
  const save = el('button', 'btn btn-primary', 'Save');
  save.type = 'submit';
  save.id = 'v-edit-save';
  const cancel = el('button', 'btn btn-dark', 'Cancel');
  cancel.type = 'button';
  cancel.addEventListener('click', () => closeMetaEditor(r));
  buttons.append(save, cancel);
  form.append(problem, buttons);
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const fields = { labels: labels.value, patient_id: patient.value, age: age.value, sex: sex.value,
      view: view.value, study_date: date.value };
    saveMetaEdit(r, fields, problem, save);
  });
  $('v-meta').replaceChildren(form);
  labels.focus();
}

// Back to the details as stored, focus on "Edit details" (inside the dialog,
// so that Escape and Tab keep working).
function closeMetaEditor(r) {
  renderViewerMeta(r, viewer.info);
  if ($('v-edit')) $('v-edit').focus();
}

// The merge patch of what the form changed, or a message for a bad value.
function metaPatch(info, fields) {
  const patch = {};
  const list = fields.labels.split(',').map((x) => x.trim()).filter((x) => x);
  if (JSON.stringify(list) !== JSON.stringify(info.labels || [])) patch.labels = list;
  for (const k of ['patient_id', 'view', 'study_date', 'sex']) {
    const v = fields[k].trim() || null;
    if (v !== (info[k] || null)) patch[k] = v;
  }
  const a = fields.age.trim();
  if (a && !/^\d{1,3}$/.test(a)) return { error: 'Age is a whole number of years, or empty when unknown.' };
  const age = a ? Number(a) : null;
  if (age !== null && age > 200) return { error: 'Age is at most 200 years.' };
  if (age !== (info.age === undefined ? null : info.age)) patch.age = age;
  return { patch };
}

// The result card of image id in the grid shows r's findings again.
function refreshCard(r) {
  const card = document.querySelector(`#grid .card[data-id="${r.id}"]`);
  if (!card) return;
  const old = card.querySelector('.card-findings');
  if (old) old.replaceWith(findingTags(r.labels, 'card-findings'));
  const meta = card.querySelector('.card-meta');
  if (meta) meta.replaceChildren(...describe(r).map((b) => el('span', null, b)));
}

function adoptMetadata(r, doc, etag) {
  viewer.info = doc;
  viewer.etag = etag;
  for (const k of ['labels', 'patient_id', 'age', 'sex', 'view', 'study_date']) r[k] = doc[k];
  let learned = false;
  for (const l of doc.labels || []) {
    if (!state.knownFindings.has(l)) { state.knownFindings.add(l); learned = true; }
  }
  if (learned) refreshFindingList();
  refreshCard(r);
}

async function saveMetaEdit(r, fields, problem, save) {
  const { patch, error } = metaPatch(viewer.info || {}, fields);
  problem.hidden = !error;
  problem.textContent = error || '';
  if (error) return;
  if (!Object.keys(patch).length) { closeMetaEditor(r); return; }
  save.disabled = true;
  const headers = { 'Content-Type': 'application/json' };
  if (viewer.etag) headers['If-Match'] = viewer.etag;
  try {
    const res = await api(`/api/images/${r.id}/metadata`, { method: 'PATCH', headers, body: JSON.stringify(patch) });
    adoptMetadata(r, await res.json(), res.headers.get('ETag'));
    renderViewerMeta(r, viewer.info);
    $('v-meta').prepend(el('p', 'v-edit-saved', 'Saved.'));
    $('v-edit').focus();
  } catch (err) {
    save.disabled = false;
    if (err.status !== 412) {
      problem.textContent = 'Not saved: ' + explain(err);
      problem.hidden = false;
      save.focus(); // disabling it sent the focus out of the dialog
      return;
    }
    // Someone changed the image since its details were shown: show what is
    // stored now rather than write over a change this user has not seen.
    try {
      const res = await api(`/api/images/${r.id}/metadata`);
      adoptMetadata(r, await res.json(), res.headers.get('ETag'));
    } catch (_) { /* keep what was shown; the message still says why nothing was saved */ }
    closeMetaEditor(r);
    $('v-meta').prepend(el('p', 'error v-edit-error', 'Not saved: someone else changed this image\'s details ' +
      'since they were shown. These are the details as stored now; make your change again if it is still needed.'));
  }
}

async function loadViewerImage(r, signal) {
  let res = await api(r.image_url || `/api/images/${r.id}`, { signal });
  // A stored DICOM, TIFF, JPEG 2000 or HEIC: the browser cannot decode it, so show the gray
  // image MedSearch made of it (its DICOM window applied), at up to 2048 px.
  if (!/^image\/(png|jpeg|webp|avif|gif)/.test(res.headers.get('Content-Type') || '')) {
    res = await api(`/api/images/${r.id}/preview?size=2048`, { signal });
  }
  let bitmap;
  try {
    // turned as its EXIF Orientation says, as the browser shows the file
    // and as the server made the thumbnail (explicit: older browsers default to 'none')
    bitmap = await createImageBitmap(await res.blob(), { imageOrientation: 'from-image' });
  } catch (e) {
    // A JPEG the browser cannot decode (lossless or 12-bit): MedSearch's
    // rendering of it.
    if (signal && signal.aborted) throw e;
    res = await api(`/api/images/${r.id}/preview?size=2048`, { signal });
    bitmap = await createImageBitmap(await res.blob());
  }
  const work = document.createElement('canvas');
  work.width = bitmap.width;
  work.height = bitmap.height;
  const ctx = work.getContext('2d', { willReadFrequently: true });
  ctx.drawImage(bitmap, 0, 0);
  bitmap.close();
  const rgba = ctx.getImageData(0, 0, work.width, work.height).data;
  const gray = new Uint8ClampedArray(work.width * work.height);
  for (let i = 0, j = 0; i < gray.length; i++, j += 4) {
    gray[i] = (rgba[j] * 299 + rgba[j + 1] * 587 + rgba[j + 2] * 114) / 1000;
  }
  return { work, gray };
}

async function openViewer(r, opener) {
  if (viewer.controller) viewer.controller.abort();
  const controller = new AbortController();
  viewer.controller = controller;
  viewer.result = r;
  viewer.opener = opener;
  syncViewerMarks();
  setAlike(alike.on); // this result's map, if "Where alike" is on
  viewer.gray = null;
  viewer.invert = false;
  $('v-invert').setAttribute('aria-pressed', 'false');
  $('viewer-title').textContent = `Image #${r.id}` + (r.original_name ? ` · ${r.original_name}` : '');
  viewerPosition();
  viewer.info = null;
  viewer.etag = null;
  viewer.copies = null;
  renderViewerMeta(r, null);
  $('viewer').hidden = false;
  document.body.style.setProperty('overflow', 'hidden');
  $('v-loading').hidden = false;
  $('v-canvas').focus();
  scheduleDraw();
  try {
    const [img, meta, copies] = await Promise.all([
      loadViewerImage(r, controller.signal),
      api(`/api/images/${r.id}/metadata`, { signal: controller.signal })
        .then(async (x) => ({ doc: await x.json(), etag: x.headers.get('ETag') })).catch(() => null),
      api(`/api/images/${r.id}/copies`, { signal: controller.signal })
        .then((x) => x.json()).catch(() => null), // an older server has no such route: nothing shown
    ]);
    if (controller === viewer.controller && copies && Array.isArray(copies.copies)) viewer.copies = { of: r.id, list: copies.copies };
    if (controller !== viewer.controller) return;
    const info = meta && meta.doc;
    // An image known by its id only (marked in a link): its details from the metadata.
    if (info && r.labels === undefined) {
      for (const k of ['labels', 'patient_id', 'age', 'sex', 'view', 'study_date', 'original_name']) r[k] = info[k];
    }
    viewer.info = info;
    viewer.etag = meta && meta.etag;
    viewer.work = img.work;
    viewer.gray = img.gray;
    viewer.w = img.work.width;
    viewer.h = img.work.height;
    renderViewerMeta(r, info);
    resetViewer();
  } catch (err) {
    if (err.name === 'AbortError') return;
    $('v-meta').prepend(el('p', 'error', 'Cannot show this image: ' + explain(err)));
  } finally {
    if (controller === viewer.controller) $('v-loading').hidden = true;
  }
}

// The result shown and its place in the grid's list, for Previous / Next.
function viewerPosition() {
  const i = viewer.result ? state.results.findIndex((x) => x.id === viewer.result.id) : -1;
  $('v-position').textContent = i >= 0 ? `${i + 1} / ${state.results.length}` : '';
  $('v-prev').disabled = i <= 0;
  $('v-next').disabled = i < 0 || i >= state.results.length - 1;
  return i;
}

// Shows the result before (-1) or after (+1) this one in the grid, the way
// a radiologist steps through a series; an unsaved edit of the details is
// left, as Escape leaves it.
function stepViewer(delta) {
  const i = viewerPosition();
  const next = i >= 0 ? state.results[i + delta] : null;
  if (!next) return;
  const card = [...$('grid').querySelectorAll('.card')].find((c) => c.dataset.id === String(next.id));
  const focused = document.activeElement && document.activeElement.id;
  openViewer(next, card || viewer.opener);
  // keep the button for the next press, unless this was the end (then the image has focus)
  if ((focused === 'v-prev' || focused === 'v-next') && !$(focused).disabled) $(focused).focus();
}

function closeViewer() {
  if (viewer.controller) viewer.controller.abort();
  viewer.controller = null;
  setAlike(false);
  $('viewer').hidden = true;
  document.body.style.removeProperty('overflow');
  viewer.gray = null;
  viewer.work = null;
  if (viewer.opener && document.contains(viewer.opener)) viewer.opener.focus();
}

// ---------- viewer: where the query and the result are alike ----------
// "Where alike" asks the server for the similarity map of the query and the
// result shown (POST /api/similarity-map, or GET .../similarity-map for a
// stored query): each image cut into a grid of cells, each cell its part of
// the similarity. The result's cells are drawn over the image in the viewer,
// the query's over its preview on the page (and over the small copy of it
// the viewer shows, since the viewer covers the page). Fetched when asked
// for, kept for the current search.

const alike = {
  on: false,
  cache: new Map(),     // 'resultId|region' -> the API's reply, for the current search
  controller: null,     // AbortController of the map in flight
  doc: null,            // the reply drawn
  heat: null,           // the result's cells as a small canvas, drawn with the image
};

// Paints a map's cells into canvas, smoothed (bilinear between the cells'
// centres, HEAT_STEP pixels a cell; drawImage smooths the rest of the way):
// where the similarity is positive warm, more opaque and yellower the
// nearer it is to the largest cell; where it argues against the match clear.
// Its data-cells: how many cells are positive.
const HEAT_STEP = 16;

function paintHeat(canvas, cells) {
  const gh = cells.length, gw = gh ? cells[0].length : 0;
  const v = cells.flat().map(Number);
  const max = Math.max(0, ...v);
  canvas.width = Math.max(1, gw * HEAT_STEP);
  canvas.height = Math.max(1, gh * HEAT_STEP);
  const ctx = canvas.getContext('2d');
  const img = ctx.createImageData(canvas.width, canvas.height);
  const axis = (p, n) => {
    const f = Math.max(0, Math.min(n - 1, (p + 0.5) / HEAT_STEP - 0.5));
    const i = Math.floor(f);
    return [i, Math.min(i + 1, n - 1), f - i];
  };
  for (let y = 0; y < canvas.height && max > 0; y++) {
    const [y0, y1, ty] = axis(y, gh);
    for (let x = 0; x < canvas.width; x++) {
      const [x0, x1, tx] = axis(x, gw);
      const top = v[y0 * gw + x0] * (1 - tx) + v[y0 * gw + x1] * tx;
      const bottom = v[y1 * gw + x0] * (1 - tx) + v[y1 * gw + x1] * tx;
      const t = (top * (1 - ty) + bottom * ty) / max;
      if (t > 0) img.data.set([255, Math.round(60 + 170 * t), 0, Math.round(210 * t ** 1.5)], (y * canvas.width + x) * 4);
    }
  }
  ctx.putImageData(img, 0, 0);
  canvas.dataset.cells = String(v.filter((c) => c > 0).length);
}

// The part of the query preview the query's cells tile, in %: the region
// when it is in percentages (as the region box), all of it without one;
// null for a region in pixels (the preview may be smaller than the image).
function queryHeatPercents() {
  return state.region ? regionPercents(state.region) : [0, 0, 100, 100];
}

function placeQueryHeat() {
  const c = $('query-heat');
  if (!alike.doc) { c.hidden = true; return; }
  placeOverPicture(c, queryHeatPercents());
}

// The query preview with its cells, small, in the viewer's corner.
function drawAlikeQuery() {
  const img = $('query-preview');
  const fig = $('v-alike-query');
  const pct = queryHeatPercents();
  fig.hidden = img.hidden || !img.naturalWidth || !pct;
  if (fig.hidden) return;
  const canvas = fig.querySelector('canvas');
  const s = 140 * (window.devicePixelRatio || 1) / img.naturalWidth;
  canvas.width = Math.round(img.naturalWidth * s);
  canvas.height = Math.round(img.naturalHeight * s);
  const ctx = canvas.getContext('2d');
  ctx.drawImage(img, 0, 0, canvas.width, canvas.height);
  const [x, y, w, h] = pct.map((v, i) => v / 100 * (i % 2 ? canvas.height : canvas.width));
  ctx.drawImage($('query-heat'), x, y, w, h);
  if (state.region) {
    ctx.strokeStyle = '#ffd166';
    ctx.lineWidth = 2;
    ctx.strokeRect(x, y, w, h);
  }
}

function alikeLegend(text, error = false) {
  const p = $('v-alike-legend');
  p.textContent = text;
  p.classList.toggle('v-alike-error', error);
}

function drawAlike(doc) {
  alike.doc = doc;
  alike.heat = document.createElement('canvas');
  paintHeat(alike.heat, doc.result_cells);
  $('v-canvas').dataset.alikeCells = alike.heat.dataset.cells;
  paintHeat($('query-heat'), doc.query_cells);
  placeQueryHeat();
  drawAlikeQuery();
  const moved = feedbackApplied();
  alikeLegend(`Where alike: similarity ${Number(doc.similarity).toFixed(3)} (${doc.similarity_kind}, without query expansion` +
    `${moved ? ' or feedback' : ''}${state.qe > 0 || moved ? ', unlike the score' : ''}); brightest where this image matches the query most`);
  scheduleDraw();
}

// Shows the map of the result in the viewer, or (on false) no map at all.
function setAlike(on) {
  alike.on = on;
  $('v-alike').setAttribute('aria-pressed', String(on));
  if (alike.controller) alike.controller.abort();
  alike.controller = null;
  alike.doc = null;
  alike.heat = null;
  delete $('v-canvas').dataset.alikeCells;
  $('query-heat').hidden = true;
  $('v-alike-query').hidden = true;
  alikeLegend('');
  if (!$('viewer').hidden) scheduleDraw();
  if (on && viewer.result && state.query) loadAlike(viewer.result);
}

async function loadAlike(r) {
  const controller = new AbortController();
  alike.controller = controller;
  const key = `${r.id}|${state.region}`;
  let doc = alike.cache.get(key);
  if (!doc) {
    alikeLegend('Where alike: comparing with the query…');
    const p = new URLSearchParams({ with: String(r.id) });
    if (state.region) p.set('region', state.region);
    const options = { signal: controller.signal };
    let path = `/api/images/${state.query.id}/similarity-map?${p}`;
    if (state.query.kind === 'file') {
      path = `/api/similarity-map?${p}`;
      options.method = 'POST';
      options.body = new FormData();
      options.body.append('image', state.query.file, state.query.name);
    }
    try {
      doc = await (await api(path, options)).json();
      alike.cache.set(key, doc);
    } catch (err) {
      if (controller === alike.controller && err.name !== 'AbortError') {
        alikeLegend('Where alike is not available: ' + (err.status === 400 ? err.message : explain(err)), true);
      }
      return;
    }
  }
  if (controller === alike.controller) drawAlike(doc);
}

// ---------- the address: a search by a stored image as a link ----------

// The page's address holds the search after '#': the stored image searched
// with, the settings and its feedback marks, e.g.
// #similar=163&k=20&qe=1&labels=Effusion|Mass&sex=F&view=PA&age=40-60&one=1&region=0,0,50%25,100%25&like=12,17&unlike=87
// A link to it (bookmarked, sent to a colleague, opened in another tab)
// runs the same search. An uploaded file cannot be put in a link: its
// search keeps the settings only. The token never goes into the address.
// The address is replaced, not pushed: Back leaves the page as before.
const LINK_MAX_FINDINGS = 20;

function linkParams() {
  const p = new URLSearchParams();
  if (state.query && state.query.kind === 'id') p.set('similar', String(state.query.id));
  p.set('k', $('k-select').value);
  p.set('qe', $('qe-toggle').checked ? '1' : '0');
  if (state.findings.length) p.set('labels', state.findings.join('|'));
  if ($('filter-sex').value) p.set('sex', $('filter-sex').value);
  if ($('filter-view').value) p.set('view', $('filter-view').value);
  const min = $('filter-age-min').value.trim(), max = $('filter-age-max').value.trim();
  if (min || max) p.set('age', `${min}-${max}`);
  if ($('filter-one-per-patient').checked) p.set('one', '1');
  if (state.region && state.query && state.query.kind === 'id') p.set('region', state.region);
  if (state.query && state.query.kind === 'id') {
    const { like, unlike } = markLists();
    if (like.length) p.set('like', like.join(','));
    if (unlike.length) p.set('unlike', unlike.join(','));
  }
  return p;
}

function writeLink() {
  // commas need no escape after '#': like=12,17 reads better than like=12%2C17
  const hash = '#' + linkParams().toString().replace(/%2C/gi, ',');
  if (location.hash !== hash) history.replaceState(history.state, '', hash);
}

// Whether select has an option of this value (a link cannot add one).
const hasOption = (select, v) => [...$(select).options].some((o) => o.value === v);

// A link's list of marked ids: positive whole numbers, each once, at most
// FEEDBACK_MAX; any other item is ignored.
function linkIds(text) {
  const ids = [];
  for (const item of (text || '').split(',')) {
    const v = item.trim();
    if (!/^[1-9]\d{0,15}$/.test(v) || !Number.isSafeInteger(Number(v))) continue;
    if (!ids.includes(Number(v)) && ids.length < FEEDBACK_MAX) ids.push(Number(v));
  }
  return ids;
}

// Applies a link's settings to the controls; every value is checked as the
// controls would take it, anything else is ignored. Returns the stored
// image to search with (0: none) and its region ('' for all of it).
function applyLink(hash) {
  const p = new URLSearchParams(hash.replace(/^#/, ''));
  const k = p.get('k');
  if (k && hasOption('k-select', k)) $('k-select').value = k;
  const qe = p.get('qe');
  if (qe === '0' || qe === '1') {
    $('qe-toggle').checked = qe === '1';
    state.qeTouched = true;
  }
  const labels = (p.get('labels') || '').split('|').map((l) => l.trim())
    .filter((l) => l && l.length <= 200 && !/[\u0000-\u001f]/.test(l));
  state.findings = [...new Set(labels)].slice(0, LINK_MAX_FINDINGS);
  renderChips();
  const sex = p.get('sex');
  $('filter-sex').value = sex && hasOption('filter-sex', sex) ? sex : '';
  const view = p.get('view');
  $('filter-view').value = view && hasOption('filter-view', view) ? view : '';
  const age = /^(\d{0,3})-(\d{0,3})$/.exec(p.get('age') || '');
  $('filter-age-min').value = age ? age[1] : '';
  $('filter-age-max').value = age ? age[2] : '';
  $('filter-one-per-patient').checked = p.get('one') === '1';
  const id = p.get('similar');
  const region = p.get('region') || '';
  // an id on both lists says nothing: dropped from both
  const like = linkIds(p.get('like')), unlike = linkIds(p.get('unlike'));
  return {
    id: id && /^[1-9]\d{0,15}$/.test(id) ? Number(id) : 0,
    region: /^[\d.%, ]{1,128}$/.test(region) ? region : '',
    marks: { like: like.filter((x) => !unlike.includes(x)), unlike: unlike.filter((x) => !like.includes(x)) },
  };
}

// A link opened, or an address typed over this one: run what it says.
function followLink() {
  if (!location.hash || location.hash === '#') return;
  const link = applyLink(location.hash);
  if (link.id) queryById(link.id, '', link.region, link.marks);
  else runSearch();
}

// ---------- start ----------

function main() {
  const openToken = setupToken();
  setupDropzone();
  setupRegion();
  setupFilters();
  setupViewerInput();
  setupFeedback();
  // The collection's defaults first, so that a link's settings win.
  loadCollectionInfo(openToken).finally(followLink);
  window.addEventListener('hashchange', followLink);
}

main();
