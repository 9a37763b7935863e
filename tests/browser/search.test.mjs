// Browser test of the web page: Debian's chromium driven by npm playwright-core
// against the real server ($MEDSEARCH_BIN serve) over a collection built from
// $MEDSEARCH_SHARED/data with the shared MobileNetV2. Uploads a real X-ray,
// checks the first result is that very image with score 1.000, applies a
// findings filter and checks every card shows it, opens a result in the
// viewer (window/level drag, zoom), runs "find similar", searches with a
// DICOM file (shown as the server renders it) and opens a stored DICOM in the
// viewer, does the same with a 12-bit lossless JPEG (which the browser cannot
// decode), uses the page behind a reverse proxy under a path prefix, shows a
// JPEG stored sideways with EXIF Orientation 6 upright (thumbnail, viewer,
// size), shows a WebP query and a stored WebP as the browser decodes them
// and JPEG 2000 and HEIC ones as the server renders them, edits an image's
// details in the viewer on a server that takes writes (saved, shown on the
// card, found by a filter; refused with the stored details shown when
// someone else changed the image meanwhile), shows in the viewer where the
// query and a result are alike (the server's similarity map over each, a
// refusal shown as such), refines a search with relevance feedback (results
// marked "More like this" / "Not this" on their cards or with L and N in the
// viewer, the bar of marks, Refine search sending like= and unlike=, the
// marks kept over rounds, in the address and after a refused search), and
// saves screenshots under tests/browser/out/.
// Exit 0 pass, 77 skip (with the reason), 1 fail.
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const outDir = path.join(here, 'out');
const chromiumPath = '/usr/bin/chromium';
const bin = process.env.MEDSEARCH_BIN;
const shared = process.env.MEDSEARCH_SHARED;
const model = shared && path.join(shared, 'models', 'mobilenet_v2_1.0_224_imagenet.onnx');
const queryImage = shared && path.join(shared, 'data', 'nih_cxr14_fullres', 'images', '00000001_000.png');
const queryFinding = 'Cardiomegaly';   // 00000001_000.png's label in labels.csv

function skip(why) {
  console.log(`skip: ${why}`);
  process.exit(77);
}

function check(cond, what) {
  if (!cond) throw new Error(`check failed: ${what}`);
  console.log(`ok: ${what}`);
}

if (!fs.existsSync(chromiumPath)) skip(`${chromiumPath} not installed (apt-get install chromium)`);
let chromium;
try {
  ({ chromium } = await import('playwright-core'));
} catch (_) {
  skip('tests/browser/node_modules lacks playwright-core (run: cd tests/browser && npm install)');
}
if (!bin || !fs.existsSync(bin)) skip(`MEDSEARCH_BIN (${bin}) is not built`);
if (!shared || !fs.existsSync(model) || !fs.existsSync(queryImage)) skip(`shared data/models not found under MEDSEARCH_SHARED (${shared})`);

const work = fs.mkdtempSync(path.join(os.tmpdir(), 'medsearch-browser-'));
const db = path.join(work, 'collection.db');
let server = null;
let context = null;

// A collection of a few hundred real X-rays: 200 small NIH images, the four
// full-resolution NIH ones (the query is among them) and the COVID set.
function ingest(folder, files) {
  const src = path.join(shared, 'data', folder);
  const dst = path.join(work, folder);
  fs.mkdirSync(path.join(dst, 'images'), { recursive: true });
  fs.copyFileSync(path.join(src, 'labels.csv'), path.join(dst, 'labels.csv'));
  for (const f of files) fs.copyFileSync(path.join(src, 'images', f), path.join(dst, 'images', f));
  const r = spawnSync(bin, ['ingest', path.join(dst, 'images'), '--labels', path.join(dst, 'labels.csv'),
    '--db', db, '--model', model], { encoding: 'utf8', timeout: 300000 });
  if (r.status !== 0) throw new Error(`ingest ${folder} failed (${r.status}): ${r.stderr}`);
}

// A lossless JPEG (ITU T.81 process 14, predictor 1, one component) of
// w x h samples of `precision` bits. Its Huffman table gives category k the
// 5-bit code k. Browsers decode only 8-bit DCT JPEG, so the page must show
// such a file as the server renders it.
function losslessJpeg(samples, w, h, precision) {
  const out = [0xff, 0xd8];
  const segment = (marker, bytes) => out.push(0xff, marker, (bytes.length + 2) >> 8, (bytes.length + 2) & 255, ...bytes);
  segment(0xc3, [precision, h >> 8, h & 255, w >> 8, w & 255, 1, 1, 0x11, 0]);
  const counts = new Array(16).fill(0);
  counts[4] = 17;
  segment(0xc4, [0x00, ...counts, ...Array.from({ length: 17 }, (_, k) => k)]);
  segment(0xda, [1, 1, 0x00, 1, 0, 0]);
  let acc = 0;
  let nbits = 0;
  const put = (v, len) => {
    for (let i = len - 1; i >= 0; i--) {
      acc = (acc << 1) | ((v >> i) & 1);
      if (++nbits === 8) {
        out.push(acc);
        if (acc === 0xff) out.push(0);
        acc = 0;
        nbits = 0;
      }
    }
  };
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const pred = x > 0 ? samples[y * w + x - 1] : y > 0 ? samples[(y - 1) * w] : 1 << (precision - 1);
      const d = samples[y * w + x] - pred;
      let cat = 0;
      for (let m = Math.abs(d); m; m >>= 1) cat++;
      put(cat, 5);
      if (cat) put(d < 0 ? d + (1 << cat) - 1 : d, cat);
    }
  }
  while (nbits) put(1, 1);
  out.push(0xff, 0xd9);
  return Buffer.from(out);
}

// The query X-ray as a 256 x 256 12-bit lossless JPEG: its gray levels as
// MedSearch reads them (embed --dump-input), times 16.
function lossless12FromQuery(file) {
  const dump = path.join(work, 'query.f32');
  const r = spawnSync(bin, ['embed', '--model', model, '--input-size', '256', '--mean', '0', '--scale', '1',
    '--dump-input', dump, queryImage], { encoding: 'utf8', timeout: 120000 });
  if (r.status !== 0) throw new Error(`embed --dump-input failed (${r.status}): ${r.stderr}`);
  const f = new Float32Array(fs.readFileSync(dump).buffer.slice(0));
  const samples = Array.from({ length: 256 * 256 }, (_, i) => Math.round(f[i]) * 16 + 8);
  fs.writeFileSync(file, losslessJpeg(samples, 256, 256, 12));
}

// The size in a JPEG's frame header, or null.
function jpegSize(bytes) {
  for (let i = 2; i + 9 < bytes.length && bytes[i] === 0xff;) {
    const m = bytes[i + 1];
    if (m >= 0xc0 && m <= 0xcf && m !== 0xc4 && m !== 0xc8 && m !== 0xcc) {
      return { h: bytes[i + 5] << 8 | bytes[i + 6], w: bytes[i + 7] << 8 | bytes[i + 8] };
    }
    i += 2 + (bytes[i + 2] << 8 | bytes[i + 3]);
  }
  return null;
}

// The JPEG with an EXIF block saying Orientation 6 (stored a quarter turn
// anticlockwise: shown turned clockwise) right after its SOI, as a phone writes it.
function withOrientation6(bytes) {
  const tiff = [0x49, 0x49, 0x2a, 0, 8, 0, 0, 0, 1, 0, 0x12, 0x01, 3, 0, 1, 0, 0, 0, 6, 0, 0, 0, 0, 0, 0, 0];
  const payload = [0x45, 0x78, 0x69, 0x66, 0, 0, ...tiff];
  const app1 = [0xff, 0xe1, (payload.length + 2) >> 8, (payload.length + 2) & 255, ...payload];
  return Buffer.concat([bytes.subarray(0, 2), Buffer.from(app1), bytes.subarray(2)]);
}

function listImages(folder, n) {
  return fs.readdirSync(path.join(shared, 'data', folder, 'images')).sort().slice(0, n);
}

async function startServer(env = {}) {
  server = spawn(bin, ['serve', '--db', db, '--model', model, '--listen', '127.0.0.1:0', '--quiet'],
    { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
  let stderr = '';
  server.stderr.on('data', (d) => { stderr += d; });
  const lines = createInterface({ input: server.stdout });
  return await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('server did not start in 120 s: ' + stderr)), 120000);
    lines.on('line', (line) => {
      const m = line.match(/serving (http:\/\/127\.0\.0\.1:\d+\/)/);
      if (m) { clearTimeout(timer); resolve(m[1]); }
    });
    server.on('exit', (code) => { clearTimeout(timer); reject(new Error(`server exited ${code}: ${stderr}`)); });
  });
}

async function stopServer() {
  if (!server || server.exitCode !== null) return null;
  const done = new Promise((resolve) => server.on('exit', (code) => resolve(code)));
  server.kill('SIGTERM');
  return await done;
}

// A reverse proxy that serves MedSearch under prefix, as a hospital's web
// server would (https://host/medsearch/ -> http://server/). A request
// outside the prefix is answered 404 and kept in `outside`: the page must
// ask for nothing by its absolute path.
async function startPrefixProxy(target, prefix) {
  const t = new URL(target);
  const outside = [];
  const proxy = http.createServer((req, res) => {
    if (!req.url.startsWith(prefix)) {
      outside.push(req.url);
      res.writeHead(404).end('outside the prefix');
      return;
    }
    const up = http.request({ host: t.hostname, port: t.port, method: req.method,
      path: req.url.slice(prefix.length - 1), headers: req.headers }, (r) => {
      res.writeHead(r.statusCode, r.headers);
      r.pipe(res);
    });
    up.on('error', (e) => res.writeHead(502).end(String(e)));
    req.pipe(up);
  });
  await new Promise((resolve) => proxy.listen(0, '127.0.0.1', resolve));
  return { proxy, outside, url: `http://127.0.0.1:${proxy.address().port}${prefix}` };
}

async function waitForResults(page) {
  await page.waitForFunction(() => {
    const grid = document.getElementById('grid');
    return grid && !grid.classList.contains('loading') && grid.children.length > 0 &&
      /result/.test(document.getElementById('status').textContent);
  }, null, { timeout: 60000 });
}

async function cards(page) {
  return await page.$$eval('#grid .card', (els) => els.map((e) => ({
    id: e.dataset.id,
    name: e.dataset.name,
    score: e.querySelector('.card-score').textContent,
    tags: [...e.querySelectorAll('.card-findings .tag')].map((t) => t.textContent),
  })));
}

// src mirrored left to right (op 'mirror'), upside down ('flip') or both
// ('turn') and saved by PIL (Debian python3-pil) as `format` ('WEBP',
// 'JPEG2000', 'PNG'), so that the collection holds no other copy of it.
function transformedCopy(src, dst, format, op) {
  const r = spawnSync('/usr/bin/python3', ['-c', `import sys
from PIL import Image, ImageOps
im = Image.open(sys.argv[1]).convert("L")
im = ImageOps.mirror(im) if sys.argv[4] == "mirror" else ImageOps.flip(im) if sys.argv[4] == "flip" else im.rotate(180)
im.save(sys.argv[2], sys.argv[3], **({"quality": 90} if sys.argv[3] == "WEBP" else {}))`, src, dst, format, op],
  { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`writing ${dst} with PIL failed: ${r.stderr}`);
}

// Where the query preview's picture lies on the page (object-fit: contain
// leaves bars), in page pixels.
async function previewPicture(page) {
  return await page.evaluate(() => {
    const img = document.getElementById('query-preview');
    const r = img.getBoundingClientRect();
    const s = Math.min(r.width / img.naturalWidth, r.height / img.naturalHeight);
    const w = img.naturalWidth * s, h = img.naturalHeight * s;
    return { x: r.left + (r.width - w) / 2, y: r.top + (r.height - h) / 2, w, h };
  });
}

// A mouse drag over the picture from one point to another, each given as
// fractions of its width and height.
async function dragOver(page, pic, from, to) {
  await page.mouse.move(pic.x + pic.w * from[0], pic.y + pic.h * from[1]);
  await page.mouse.down();
  await page.mouse.move(pic.x + pic.w * (from[0] + to[0]) / 2, pic.y + pic.h * (from[1] + to[1]) / 2, { steps: 4 });
  await page.mouse.move(pic.x + pic.w * to[0], pic.y + pic.h * to[1], { steps: 4 });
  await page.mouse.up();
}

// Uploads file as the query; the page must show it as the server renders it
// (POST /api/preview), width pixels wide. Returns the result cards.
async function queryShownAsRendered(page, file, width) {
  const rendered = page.waitForResponse((r) => r.url().includes('/api/preview') && r.status() === 200);
  const searched = page.waitForRequest((r) => r.url().includes('/api/search'));
  await page.setInputFiles('#file-input', file);
  await searched;
  await rendered;
  await page.waitForFunction((w) => {
    const i = document.getElementById('query-preview');
    return !i.hidden && i.complete && i.naturalWidth === w;
  }, width, { timeout: 30000 });
  await waitForResults(page);
  return await cards(page);
}

// Opens the first result in the viewer with the keyboard and waits for its
// image. Returns the viewer's metadata text.
async function openFirstResult(page) {
  await page.focus('#grid .card:nth-child(1)');
  await page.keyboard.press('Enter');
  await page.waitForSelector('#viewer:not([hidden])');
  await page.waitForFunction(() => document.getElementById('v-loading').hidden &&
    /W 256/.test(document.getElementById('v-readout').textContent), null, { timeout: 30000 });
  return await page.textContent('#v-meta');
}

let failed = false;
try {
  ingest('nih_cxr14_64px', listImages('nih_cxr14_64px', 200));
  ingest('nih_cxr14_fullres', listImages('nih_cxr14_fullres', 10));
  ingest('covid_chestxray_2020', listImages('covid_chestxray_2020', 200));
  // One DICOM, stored uncompressed under an archive-like name (step 7).
  const dicomDir = path.join(work, 'dicom');
  fs.mkdirSync(dicomDir);
  fs.copyFileSync(path.join(shared, 'data', 'dicom', 'siim_cxr_pa_uncompressed_evrle.dcm'), path.join(dicomDir, 'IM0001.dcm'));
  const dicomIngest = spawnSync(bin, ['ingest', dicomDir, '--db', db, '--model', model], { encoding: 'utf8', timeout: 300000 });
  if (dicomIngest.status !== 0) throw new Error(`ingest of the DICOM failed (${dicomIngest.status}): ${dicomIngest.stderr}`);
  // The query X-ray as a 12-bit lossless JPEG, stored (step 8).
  const losslessDir = path.join(work, 'lossless');
  fs.mkdirSync(losslessDir);
  const losslessFile = path.join(losslessDir, 'query12.jpg');
  lossless12FromQuery(losslessFile);
  const losslessIngest = spawnSync(bin, ['ingest', losslessDir, '--db', db, '--model', model], { encoding: 'utf8', timeout: 300000 });
  if (losslessIngest.status !== 0) throw new Error(`ingest of the lossless JPEG failed (${losslessIngest.status}): ${losslessIngest.stderr}`);
  // A landscape COVID X-ray stored with EXIF Orientation 6, as a phone's
  // photo of a film is (step 10).
  const covidDir = path.join(shared, 'data', 'covid_chestxray_2020', 'images');
  const landscape = listImages('covid_chestxray_2020', 200).map((f) => path.join(covidDir, f))
    .find((f) => /\.jpe?g$/i.test(f) && (({ w, h } = jpegSize(fs.readFileSync(f)) || {}) => w > 1.2 * h)());
  if (!landscape) throw new Error('no landscape JPEG among the COVID images for step 10');
  const storedSize = jpegSize(fs.readFileSync(landscape));
  const turnedDir = path.join(work, 'turned');
  fs.mkdirSync(turnedDir);
  const turnedFile = path.join(turnedDir, 'turned.jpg');
  fs.writeFileSync(turnedFile, withOrientation6(fs.readFileSync(landscape)));
  const turnedIngest = spawnSync(bin, ['ingest', turnedDir, '--db', db, '--model', model], { encoding: 'utf8', timeout: 300000 });
  if (turnedIngest.status !== 0) throw new Error(`ingest of the turned JPEG failed (${turnedIngest.status}): ${turnedIngest.stderr}`);
  // A COVID X-ray, mirrored, as a lossy WebP (step 11), and upside down as
  // a JPEG 2000 file (step 12).
  const webpDir = path.join(work, 'webp');
  fs.mkdirSync(webpDir);
  const webpFile = path.join(webpDir, 'mirrored.webp');
  transformedCopy(landscape, webpFile, 'WEBP', 'mirror');
  const jp2File = path.join(webpDir, 'flipped.jp2');
  transformedCopy(landscape, jp2File, 'JPEG2000', 'flip');
  // ... and turned half round as a HEIC, as an iPhone saves a photo (step 13).
  const turnedPng = path.join(work, 'turned-half.png');
  transformedCopy(landscape, turnedPng, 'PNG', 'turn');
  const heicFile = path.join(webpDir, 'phone.heic');
  const heicEnc = spawnSync('heif-enc', ['-q', '90', turnedPng, '-o', heicFile], { encoding: 'utf8' });
  if (heicEnc.status !== 0) throw new Error(`heif-enc (Debian libheif-examples) failed: ${heicEnc.stderr || heicEnc.error}`);
  const webpIngest = spawnSync(bin, ['ingest', webpDir, '--db', db, '--model', model], { encoding: 'utf8', timeout: 300000 });
  if (webpIngest.status !== 0) throw new Error(`ingest of the WebP and JPEG 2000 failed (${webpIngest.status}): ${webpIngest.stderr}`);
  const url = await startServer();
  let origin = url; // the server's address (step 6 starts it again)
  console.log(`server at ${url}`);
  fs.mkdirSync(outDir, { recursive: true });

  context = await chromium.launchPersistentContext(path.join(work, 'profile'), {
    executablePath: chromiumPath,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync'],
    viewport: { width: 1440, height: 900 },
  });
  const page = context.pages()[0] || await context.newPage();
  const problems = [];
  page.on('pageerror', (e) => problems.push('page error: ' + e.message));
  page.on('console', (m) => { if (m.type() === 'error') problems.push('console: ' + m.text()); });
  // Everything must come from the server itself: no CDN, no external font.
  page.on('request', (r) => { if (!r.url().startsWith(origin) && !/^(data|blob):/.test(r.url())) problems.push('external request ' + r.url()); });

  await page.goto(url);
  check((await page.title()).includes('MedSearch'), 'page loads with its title');
  await page.waitForFunction(() => /images/.test(document.getElementById('collection-info').textContent));
  await page.screenshot({ path: path.join(outDir, '0-start.png') });

  // 1. A new collection expands queries with its top 3 (its default), and
  // the toggle says so. Upload the X-ray; the first result is the same image,
  // its score the similarity to the expanded query (below 1).
  await page.waitForFunction(() => document.getElementById('qe-toggle').checked, null, { timeout: 10000 })
    .catch(() => {});
  check(await page.isChecked('#qe-toggle'), 'the toggle is on for a new collection (default qe 3)');
  const newHint = await page.textContent('#qe-hint');
  check(/top 3 matches, this collection's default/.test(newHint), `the toggle says the collection's default (${newHint})`);
  let searched = page.waitForRequest((r) => r.url().includes('/api/search'));
  await page.setInputFiles('#file-input', queryImage);
  check(new URL((await searched).url()).searchParams.get('qe') === '3', 'the search sends qe=3');
  await waitForResults(page);
  let list = await cards(page);
  check(list.length === 20, `20 results shown (default k), got ${list.length}`);
  check(list[0].name === path.basename(queryImage), `first result is the uploaded image (${list[0].name})`);
  check(Number(list[0].score) > 0.5 && Number(list[0].score) < 1,
    `with expansion the first result's score is below 1 (got ${list[0].score})`);
  const status = await page.textContent('#status');
  check(/scores against the query expanded with its top 3/.test(status), `the status line says the scores are expanded (${status})`);
  check(list.every((c, i) => i === 0 || Number(c.score) <= Number(list[i - 1].score)), 'scores are in decreasing order');
  await page.waitForFunction(() => [...document.querySelectorAll('#grid .thumb img')].slice(0, 8).every((i) => i.complete && i.naturalWidth > 0));
  await page.screenshot({ path: path.join(outDir, '1-results.png') });

  // 2. A findings filter: every card must show that finding.
  await page.fill('#filter-findings', queryFinding);
  await page.press('#filter-findings', 'Enter');
  await page.waitForSelector('#finding-chips .chip');
  await page.waitForFunction((old) => {
    const first = document.querySelector('#grid .card');
    const grid = document.getElementById('grid');
    return first && !grid.classList.contains('loading') && document.querySelectorAll('#grid .card').length !== old;
  }, list.length, { timeout: 60000 }).catch(() => {});
  await waitForResults(page);
  list = await cards(page);
  check(list.length > 0, `the ${queryFinding} filter leaves ${list.length} results`);
  check(list.every((c) => c.tags.some((t) => t.toLowerCase() === queryFinding.toLowerCase())),
    `every card shows ${queryFinding}`);
  check(list[0].name === path.basename(queryImage), 'the query image is still first (it has the finding)');
  await page.waitForFunction(() => [...document.querySelectorAll('#grid .thumb img')].slice(0, 6).every((i) => i.complete && i.naturalWidth > 0));
  await page.screenshot({ path: path.join(outDir, '2-filtered.png') });

  // 3. Open a result with the keyboard, window/level by dragging, zoom.
  await page.focus('#grid .card:nth-child(1)');
  await page.keyboard.press('Enter');
  await page.waitForSelector('#viewer:not([hidden])');
  await page.waitForFunction(() => document.getElementById('v-loading').hidden &&
    /W 256/.test(document.getElementById('v-readout').textContent), null, { timeout: 30000 });
  const box = await page.locator('#v-canvas').boundingBox();
  await page.mouse.move(box.x + box.width / 2, box.y + box.height / 2);
  await page.mouse.down();
  await page.mouse.move(box.x + box.width / 2 - 80, box.y + box.height / 2 - 30, { steps: 5 });
  await page.mouse.up();
  await page.waitForTimeout(100);
  const zoomOf = (text) => Number((text.match(/(\d+)%/) || [])[1]);
  const before = await page.textContent('#v-readout');
  await page.mouse.wheel(0, -400);
  await page.waitForTimeout(200);
  const readout = await page.textContent('#v-readout');
  check(/W 176 · L 158/.test(before), `left-drag changed window/level (${before})`);
  check(zoomOf(readout) > zoomOf(before) * 1.5, `wheel zoomed in (${before} -> ${readout})`);
  const metaText = await page.textContent('#v-meta');
  check(metaText.includes('1024 × 1024') && metaText.includes(queryFinding), 'viewer shows size and findings');
  await page.screenshot({ path: path.join(outDir, '3-viewer.png') });
  await page.keyboard.press('Escape');
  await page.waitForSelector('#viewer', { state: 'hidden' });
  check(true, 'Escape closes the viewer');

  // 3b. Stepping through the results in the viewer: Page Down and the
  // arrow buttons show the next and previous result, the bar says which of
  // how many, the ends disable their button, and Escape returns to the card
  // of the result shown last.
  await page.click('#grid .card:nth-child(1)');
  await page.waitForSelector('#viewer:not([hidden])');
  check(await page.textContent('#v-position') === `1 / ${list.length}` && await page.isDisabled('#v-prev') &&
    !(await page.isDisabled('#v-next')), `the viewer says 1 / ${list.length}, Previous disabled`);
  await page.keyboard.press('PageDown');
  await page.waitForFunction((id) => document.getElementById('viewer-title').textContent.startsWith(`Image #${id}`), list[1].id);
  check(await page.textContent('#v-position') === `2 / ${list.length}`, 'Page Down shows the second result');
  await page.click('#v-next');
  await page.waitForFunction((id) => document.getElementById('viewer-title').textContent.startsWith(`Image #${id}`), list[2].id);
  await page.click('#v-prev');
  await page.waitForFunction((id) => document.getElementById('viewer-title').textContent.startsWith(`Image #${id}`), list[1].id);
  await page.waitForFunction(() => document.getElementById('v-loading').hidden, null, { timeout: 30000 });
  const stepMeta = await page.textContent('#v-meta');
  check(await page.evaluate(() => document.activeElement.id) === 'v-prev' && stepMeta.includes(list[1].name || ''),
    'the buttons step forward and back, keeping focus, and the details follow');
  await page.keyboard.press('Escape');
  await page.waitForSelector('#viewer', { state: 'hidden' });
  check(await page.evaluate(() => document.activeElement && document.activeElement.dataset.id) === list[1].id,
    'Escape returns to the card of the result shown');

  // 4. "Find similar to this one" from the second result.
  const second = list[1];
  await page.click('#grid .card:nth-child(2)');
  await page.waitForSelector('#viewer:not([hidden])');
  await page.click('#v-similar');
  await page.waitForFunction((id) => document.getElementById('query-caption').textContent.includes('#' + id), second.id);
  await waitForResults(page);
  list = await cards(page);
  check(list.length > 0 && list.every((c) => c.id !== second.id), `similar to #${second.id}: results, itself excluded`);
  check(list.every((c) => c.tags.some((t) => t.toLowerCase() === queryFinding.toLowerCase())), 'the filter still applies');
  await page.screenshot({ path: path.join(outDir, '4-similar.png') });

  // 5. A bad upload gets a clear message, not a blank page.
  const bogus = path.join(work, 'notes.png');
  fs.writeFileSync(bogus, 'this is not an image');
  await page.setInputFiles('#file-input', bogus);
  await page.waitForSelector('#error:not([hidden])');
  const errText = await page.textContent('#error');
  check(/PNG|JPEG|image/i.test(errText), `a non-image upload shows an error (${errText.trim()})`);
  // The browser cannot show it and neither can the server: back to the prompt.
  await page.waitForFunction(() => document.getElementById('query-preview').hidden &&
    !document.getElementById('drop-empty').hidden, null, { timeout: 30000 });
  check(true, 'the drop zone shows its prompt again, not an empty preview');
  await page.screenshot({ path: path.join(outDir, '5-error.png') });

  // 6. The collection's query-expansion default (medsearch qe) sets the
  // page's toggle: set to 0 the toggle starts off and the searches send
  // qe=0 (the image itself first, 1.000); switched on, the toggle sends the
  // neighbours it says (3, the recommended number).
  const stopped = await stopServer();
  check(stopped === 0, `server stopped cleanly before the qe step (${stopped})`);
  const setQe = spawnSync(bin, ['qe', '0', '--db', db], { encoding: 'utf8' });
  check(setQe.status === 0, `medsearch qe 0 (${setQe.status}: ${setQe.stderr})`);
  origin = await startServer();
  await page.goto(origin);
  await page.waitForFunction(() => /images/.test(document.getElementById('collection-info').textContent));
  await page.waitForFunction(() => !document.getElementById('qe-toggle').checked, null, { timeout: 10000 })
    .catch(() => {});
  check(!(await page.isChecked('#qe-toggle')), 'the toggle is off for a collection whose default is qe 0');
  const hint = await page.textContent('#qe-hint');
  check(/top 3 matches\)/.test(hint), `the toggle says how many neighbours it would use (${hint})`);
  searched = page.waitForRequest((r) => r.url().includes('/api/search'));
  await page.setInputFiles('#file-input', queryImage);
  check(new URL((await searched).url()).searchParams.get('qe') === '0', 'the search sends qe=0');
  await waitForResults(page);
  list = await cards(page);
  check(list[0].name === path.basename(queryImage) && list[0].score === '1.000',
    `without expansion the uploaded image is first with 1.000 (${list[0].name} ${list[0].score})`);
  check(!/expanded/.test(await page.textContent('#status')), 'without expansion the status line does not mention it');
  await page.screenshot({ path: path.join(outDir, '6-qe-off.png') });
  searched = page.waitForRequest((r) => r.url().includes('/api/search'));
  await page.check('#qe-toggle');
  check(new URL((await searched).url()).searchParams.get('qe') === '3', 'switched on, the search sends qe=3');
  await waitForResults(page);

  // 7. A DICOM query: the browser cannot show the file, so the page shows the
  // server's rendering of it (POST /api/preview); the first result is the same
  // radiograph stored uncompressed; the viewer shows that stored DICOM
  // through its preview (GET /api/images/{id}/preview).
  const dicomQuery = path.join(shared, 'data', 'dicom', 'siim_cxr_pa_jpegbaseline.dcm');
  list = await queryShownAsRendered(page, dicomQuery, 512);
  check(true, 'the DICOM query is shown as the server renders it (512 px)');
  check(list[0].name === 'IM0001.dcm', `the first result is its uncompressed copy (${list[0].name} ${list[0].score})`);
  const dicomMeta = await openFirstResult(page);
  check(dicomMeta.includes('1024 × 1024') && dicomMeta.includes('CR') && !(await page.$('#v-meta .error')),
    `the viewer shows the stored DICOM and its header's metadata (${dicomMeta.slice(0, 160)})`);
  await page.screenshot({ path: path.join(outDir, '7-dicom.png') });
  await page.keyboard.press('Escape');

  // 8. A 12-bit lossless JPEG: a .jpg the browser fails to decode, so the
  // page falls back to the server's rendering, for the query and in the
  // viewer; the first result is the stored copy.
  list = await queryShownAsRendered(page, losslessFile, 256);
  check(true, 'the 12-bit lossless JPEG query is shown as the server renders it');
  check(list[0].name === 'query12.jpg', `the first result is its stored copy (${list[0].name} ${list[0].score})`);
  const renderedStored = page.waitForResponse((r) => /\/api\/images\/\d+\/preview/.test(r.url()) && r.status() === 200);
  const losslessMeta = await openFirstResult(page);
  await renderedStored;
  check(losslessMeta.includes('256 × 256') && !(await page.$('#v-meta .error')),
    `the viewer shows the stored lossless JPEG through its preview (${losslessMeta.slice(0, 120)})`);
  await page.screenshot({ path: path.join(outDir, '8-lossless-jpeg.png') });
  await page.keyboard.press('Escape');

  // 9. Behind a reverse proxy, under a path prefix: the page, its search,
  // thumbnails and viewer all go through the prefix.
  const direct = origin;
  const behind = await startPrefixProxy(origin, '/medsearch/');
  try {
    origin = behind.url.replace(/\/medsearch\/$/, '');
    await page.goto(behind.url);
    await page.waitForFunction(() => /images/.test(document.getElementById('collection-info').textContent));
    searched = page.waitForRequest((r) => r.url().includes('/api/search'));
    await page.setInputFiles('#file-input', queryImage);
    check((await searched).url().startsWith(behind.url + 'api/search'), 'behind the proxy the search goes through the prefix');
    await waitForResults(page);
    list = await cards(page);
    check(list[0].name === path.basename(queryImage), `behind the proxy the first result is the query (${list[0].name})`);
    await page.waitForFunction(() => [...document.querySelectorAll('#grid .thumb img')].slice(0, 8).every((i) => i.complete && i.naturalWidth > 0));
    check(true, 'behind the proxy the thumbnails load');
    const proxiedMeta = await openFirstResult(page);
    check(proxiedMeta.includes(path.basename(queryImage)) && !(await page.$('#v-meta .error')),
      `behind the proxy the viewer shows the image and its metadata (${proxiedMeta.slice(0, 80)})`);
    await page.screenshot({ path: path.join(outDir, '9-behind-proxy.png') });
    await page.keyboard.press('Escape');
    check(behind.outside.length === 0, 'the page asked for nothing outside the prefix' +
      (behind.outside.length ? ': ' + behind.outside.join(', ') : ''));
  } finally {
    behind.proxy.close();
  }

  // 10. A JPEG stored sideways with EXIF Orientation 6: its thumbnail and
  // the viewer show it upright, as the browser shows the file, with the size
  // as shown (the stored grid's width and height swapped).
  origin = direct;
  await page.goto(direct);
  await page.waitForFunction(() => /images/.test(document.getElementById('collection-info').textContent));
  searched = page.waitForRequest((r) => r.url().includes('/api/search'));
  await page.setInputFiles('#file-input', turnedFile);
  await searched;
  await waitForResults(page);
  list = await cards(page);
  check(list[0].name === 'turned.jpg', `the turned JPEG finds its stored copy first (${list[0].name} ${list[0].score})`);
  const thumb = await page.waitForFunction(() => {
    const i = document.querySelector('#grid .card:nth-child(1) .thumb img');
    return i && i.complete && i.naturalWidth > 0 && [i.naturalWidth, i.naturalHeight];
  });
  const [tw, th] = await thumb.jsonValue();
  check(th > tw, `its thumbnail is upright, taller than wide (${tw} x ${th}; the stored grid is ${storedSize.w} x ${storedSize.h})`);
  const turnedMeta = await openFirstResult(page);
  check(turnedMeta.includes(`${storedSize.h} × ${storedSize.w}`), `the viewer gives the size as shown (${turnedMeta.slice(0, 120)})`);
  const [vw, vh] = await page.evaluate(() => [viewer.w, viewer.h]); // app.js's viewer state
  check(vw === storedSize.h && vh === storedSize.w, `the viewer's image is upright (${vw} x ${vh})`);
  await page.screenshot({ path: path.join(outDir, '10-exif-orientation.png') });
  await page.keyboard.press('Escape');

  // 11. A WebP: the browser shows it itself, as the query and in the viewer,
  // without asking the server to render it; the first result is its stored copy.
  const previews = [];
  const onPreview = (r) => { if (r.url().includes('/preview')) previews.push(r.url()); };
  page.on('request', onPreview);
  searched = page.waitForRequest((r) => r.url().includes('/api/search'));
  await page.setInputFiles('#file-input', webpFile);
  await searched;
  await waitForResults(page);
  await page.waitForFunction((w) => {
    const i = document.getElementById('query-preview');
    return !i.hidden && i.complete && i.naturalWidth === w;
  }, storedSize.w, { timeout: 30000 });
  list = await cards(page);
  check(list[0].name === 'mirrored.webp', `the WebP finds its stored copy first (${list[0].name} ${list[0].score})`);
  const webpMeta = await openFirstResult(page);
  check(webpMeta.includes('image/webp') && webpMeta.includes(`${storedSize.w} × ${storedSize.h}`) &&
    !(await page.$('#v-meta .error')), `the viewer shows the stored WebP (${webpMeta.slice(0, 160)})`);
  check(previews.length === 0, 'the browser decoded the WebP itself, query and viewer' +
    (previews.length ? ': ' + previews.join(', ') : ''));
  page.off('request', onPreview);
  await page.screenshot({ path: path.join(outDir, '11-webp.png') });
  await page.keyboard.press('Escape');

  // 12. A JPEG 2000 file, which browsers do not decode: the query is shown
  // as the server renders it, the first result is its stored copy, and the
  // viewer shows that through its preview.
  list = await queryShownAsRendered(page, jp2File, 512);
  check(true, 'the JPEG 2000 query is shown as the server renders it (512 px)');
  check(list[0].name === 'flipped.jp2', `the first result is its stored copy (${list[0].name} ${list[0].score})`);
  const jp2Rendered = page.waitForResponse((r) => /\/api\/images\/\d+\/preview/.test(r.url()) && r.status() === 200);
  const jp2Meta = await openFirstResult(page);
  await jp2Rendered;
  check(jp2Meta.includes('image/jp2') && jp2Meta.includes(`${storedSize.w} × ${storedSize.h}`) &&
    !(await page.$('#v-meta .error')), `the viewer shows the stored JPEG 2000 through its preview (${jp2Meta.slice(0, 160)})`);
  await page.screenshot({ path: path.join(outDir, '12-jpeg2000.png') });
  await page.keyboard.press('Escape');

  // 13. A HEIC file, which Chromium does not decode either: the same, through
  // the server's rendering.
  list = await queryShownAsRendered(page, heicFile, 512);
  check(true, 'the HEIC query is shown as the server renders it (512 px)');
  check(list[0].name === 'phone.heic', `the first result is its stored copy (${list[0].name} ${list[0].score})`);
  const heicMeta = await openFirstResult(page);
  check(heicMeta.includes('image/heic') && !(await page.$('#v-meta .error')),
    `the viewer shows the stored HEIC through its preview (${heicMeta.slice(0, 160)})`);
  await page.screenshot({ path: path.join(outDir, '13-heic.png') });
  await page.keyboard.press('Escape');

  // 14. Editing an image's details. A server with a token takes writes, and
  // the viewer offers "Edit details": without the token set in the page the
  // save is refused and says why; with it the change is saved (a PATCH of the
  // fields changed, If-Match the ETag shown), shown in the viewer and on the
  // result card, and a findings filter finds it. When someone else changed
  // the image meanwhile, nothing is saved (412) and the stored details show.
  check(await stopServer() === 0, 'server stopped cleanly before the edit step');
  const token = 'browser-edit-token-13579';
  origin = await startServer({ MEDSEARCH_TOKEN: token });
  const apiAs = (p, opts = {}) => fetch(origin + p.replace(/^\//, ''),
    { ...opts, headers: { Authorization: 'Bearer ' + token, ...(opts.headers || {}) } });
  await page.goto(origin);
  await page.waitForFunction(() => /images/.test(document.getElementById('collection-info').textContent));
  searched = page.waitForRequest((r) => r.url().includes('/api/search'));
  await page.setInputFiles('#file-input', queryImage);
  await searched;
  await waitForResults(page);
  list = await cards(page);
  check(list[0].name === path.basename(queryImage), `the query image is first again (${list[0].name})`);
  const editedId = list[0].id;
  await openFirstResult(page);
  await page.click('#v-edit');
  check(await page.inputValue('#v-edit-labels') === queryFinding, 'the editor starts from the stored findings');
  await page.fill('#v-edit-age', '59');
  await page.click('#v-edit-save');
  await page.waitForSelector('#v-edit-error:not([hidden])');
  const noToken = await page.textContent('#v-edit-error');
  check(/Not saved: .*access token/.test(noToken), `without the token nothing is saved, and the page says why (${noToken})`);
  await page.keyboard.press('Escape');
  await page.keyboard.press('Escape');
  await page.waitForSelector('#viewer', { state: 'hidden' });
  await page.click('#token-toggle');
  await page.fill('#token-input', token);
  await page.press('#token-input', 'Enter');
  await waitForResults(page);
  await openFirstResult(page);
  await page.click('#v-edit');
  await page.fill('#v-edit-labels', `${queryFinding}, Nodule`);
  await page.fill('#v-edit-age', '59');
  await page.screenshot({ path: path.join(outDir, '14-edit-form.png') });
  const patched = page.waitForRequest((r) => r.method() === 'PATCH');
  await page.click('#v-edit-save');
  const patchReq = await patched;
  check(/^"m-[0-9a-f]{32}"$/.test(patchReq.headers()['if-match'] || ''), `the save sends the ETag shown as If-Match (${patchReq.headers()['if-match']})`);
  check(JSON.stringify(JSON.parse(patchReq.postData())) === JSON.stringify({ labels: [queryFinding, 'Nodule'], age: 59 }),
    `only the fields changed are sent (${patchReq.postData()})`);
  await page.waitForSelector('.v-edit-saved');
  const savedMeta = await page.textContent('#v-meta');
  check(savedMeta.includes('Nodule') && savedMeta.includes('59 years'), `the viewer shows the saved details (${savedMeta.slice(0, 120)})`);
  let stored = await (await apiAs(`/api/images/${editedId}/metadata`)).json();
  check(JSON.stringify(stored.labels) === JSON.stringify([queryFinding, 'Nodule']) && stored.age === 59,
    `the server stored them (${JSON.stringify(stored.labels)}, ${stored.age})`);
  await page.screenshot({ path: path.join(outDir, '14-edit-saved.png') });
  const cardTags = await page.$$eval('#grid .card:nth-child(1) .card-findings .tag', (t) => t.map((x) => x.textContent));
  check(cardTags.includes('Nodule'), `the result card shows the new finding (${cardTags.join(', ')})`);
  // Someone else changes the image while its details are shown here.
  const other = await apiAs(`/api/images/${editedId}/metadata`, { method: 'PATCH',
    headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ view: 'AP' }) });
  check(other.status === 200, `another client changes the view (${other.status})`);
  await page.click('#v-edit');
  await page.fill('#v-edit-age', '60');
  await page.click('#v-edit-save');
  await page.waitForSelector('#v-meta .v-edit-error');
  const conflict = await page.textContent('#v-meta');
  check(/someone else changed/.test(conflict) && conflict.includes('AP') && conflict.includes('59 years'),
    `a stale edit is not saved and the stored details show (${conflict.slice(0, 160)})`);
  stored = await (await apiAs(`/api/images/${editedId}/metadata`)).json();
  check(stored.age === 59 && stored.view === 'AP', 'the other client\'s change stands');
  await page.screenshot({ path: path.join(outDir, '14-edit-conflict.png') });
  await page.keyboard.press('Escape');
  await page.waitForSelector('#viewer', { state: 'hidden' });
  await page.fill('#filter-findings', 'Nodule');
  await page.press('#filter-findings', 'Enter');
  await page.waitForFunction(() => [...document.querySelectorAll('#finding-chips .chip')].some((c) => /Nodule/.test(c.textContent)));
  await waitForResults(page);
  list = await cards(page);
  check(list.length > 0 && list[0].id === editedId && list.every((c) => c.tags.includes('Nodule')),
    `the Nodule filter finds the edited image first (${list.slice(0, 3).map((c) => c.id).join(', ')})`);

  // 15. Searching with a region of the query. "Select region", then a drag
  // over the preview: the search sends the rectangle in percentages of the
  // image, its results are what the API gives for that region, the box stays
  // drawn and the status line gives it in pixels; the drag opens no file
  // chooser. A typed region outside the image is refused with the image's
  // size; "Whole image" searches with all of it again.
  await page.click('#clear-filters');
  await waitForResults(page);
  searched = page.waitForRequest((r) => r.url().includes('/api/search'));
  await page.setInputFiles('#file-input', queryImage);
  await searched;
  await waitForResults(page);
  await page.waitForSelector('#region-row:not([hidden])');
  check(await page.inputValue('#region-input') === '', 'a new query starts with the whole image');
  const stateBeforeRegion = (await cards(page)).map((c) => c.id).join();
  let choosers = 0;
  page.on('filechooser', () => { choosers++; });
  await page.click('#region-draw');
  check(await page.getAttribute('#region-draw', 'aria-pressed') === 'true', 'Select region waits for a drag');
  const pic = await previewPicture(page);
  searched = page.waitForRequest((r) => r.url().includes('/api/search'));
  const answered = page.waitForResponse((r) => r.url().includes('/api/search'));
  await dragOver(page, pic, [0.25, 0.2], [0.75, 0.7]);
  const sentRegion = new URL((await searched).url()).searchParams.get('region') || '';
  const pct = sentRegion.split(',').map((v) => parseFloat(v));
  check(/^(\d+\.\d\d%,){3}\d+\.\d\d%$/.test(sentRegion) && Math.abs(pct[0] - 25) < 1 && Math.abs(pct[1] - 20) < 1 &&
    Math.abs(pct[2] - 50) < 1 && Math.abs(pct[3] - 50) < 1, `the drag sends its rectangle in percentages (${sentRegion})`);
  const regionAnswer = await (await answered).json();
  await waitForResults(page);
  list = await cards(page);
  const regionDirect = await (await apiAs(`/api/search?k=${list.length}&qe=${regionAnswer.qe}&region=${encodeURIComponent(sentRegion)}`,
    { method: 'POST', headers: { 'Content-Type': 'image/png' }, body: fs.readFileSync(queryImage) })).json();
  check(regionAnswer.region && regionAnswer.region.width > 490 && regionAnswer.region.width < 534 &&
    regionAnswer.region.x > 245 && regionAnswer.region.x < 267, `the answer gives the region in pixels (${JSON.stringify(regionAnswer.region)})`);
  check(list.length > 0 && JSON.stringify(list.map((c) => [c.id, c.score])) ===
    JSON.stringify(regionDirect.results.map((r) => [String(r.id), Number(r.score).toFixed(3)])),
  `the page shows the API's results for that region (${list.slice(0, 3).map((c) => c.id).join(', ')})`);
  check(list.map((c) => c.id).join() !== stateBeforeRegion, 'the region changes the results');
  const status15 = await page.textContent('#status');
  check(new RegExp(`region ${regionAnswer.region.width} × ${regionAnswer.region.height} px`).test(status15),
    `the status line gives the region (${status15})`);
  const drawn = await page.locator('#region-box').boundingBox();
  check(drawn && Math.abs(drawn.width - pic.w * 0.5) < 3 && Math.abs(drawn.height - pic.h * 0.5) < 3,
    `the region stays drawn on the preview (${drawn && Math.round(drawn.width)} x ${drawn && Math.round(drawn.height)})`);
  check(choosers === 0 && await page.inputValue('#region-input') === sentRegion,
    `the drag opened no file chooser (${choosers}) and the field shows the region`);
  await page.screenshot({ path: path.join(outDir, '15-region.png') });
  await page.fill('#region-input', '0,0,5000,10');
  await page.press('#region-input', 'Enter');
  await page.waitForSelector('#error:not([hidden])');
  const regionErr = await page.textContent('#error');
  check(/does not lie inside the 1024x1024 image/.test(regionErr), `a region outside the image is refused with its size (${regionErr.trim()})`);
  check(await page.isHidden('#region-box'), 'a pixel region is not drawn');
  searched = page.waitForRequest((r) => r.url().includes('/api/search'));
  await page.click('#region-clear');
  check(!new URL((await searched).url()).searchParams.has('region'), '"Whole image" searches without a region');
  await waitForResults(page);
  list = await cards(page);
  check(list.map((c) => c.id).join() === stateBeforeRegion && !/region/.test(await page.textContent('#status')),
    'and gives the whole image\'s results again');
  // A region of a stored image: "Find similar" from the viewer, then a drag
  // over its thumbnail asks for the similar ones of that region.
  const regionOf = list[1];
  await page.click('#grid .card:nth-child(2)');
  await page.waitForSelector('#viewer:not([hidden])');
  await page.click('#v-similar');
  await page.waitForFunction((id) => document.getElementById('query-caption').textContent.includes('#' + id), regionOf.id);
  await waitForResults(page);
  await page.waitForSelector('#region-row:not([hidden])');
  check(await page.inputValue('#region-input') === '', 'a stored image as the query starts with all of it');
  await page.click('#region-draw');
  const similarAsked = page.waitForRequest((r) => r.url().includes('/similar?') && r.url().includes('region='));
  const similarAnswered = page.waitForResponse((r) => r.url().includes('/similar?') && r.url().includes('region='));
  await dragOver(page, await previewPicture(page), [0.1, 0.1], [0.5, 0.9]);
  const similarUrl = new URL((await similarAsked).url());
  const similarAnswer = await (await similarAnswered).json();
  check(similarUrl.pathname.endsWith(`/api/images/${regionOf.id}/similar`) && /%$/.test(similarUrl.searchParams.get('region')) &&
    similarAnswer.region && similarAnswer.query_id === Number(regionOf.id),
  `a drag over the stored image asks for its region's similar ones (${similarUrl.searchParams.get('region')}, ${JSON.stringify(similarAnswer.region)})`);
  await waitForResults(page);
  list = await cards(page);
  check(list.length > 0 && list.every((c) => c.id !== regionOf.id) && /region/.test(await page.textContent('#status')),
    'its results leave the image itself out and the status gives the region');

  // 16. The address is a link to the search: after step 15 it names the
  // stored image and its region; opened in another tab it runs the same
  // search with the same settings, and a filter changed there shows in its
  // address. A hand-made address with hostile values runs nothing and
  // leaves the controls as they were; an address typed over the page runs.
  const link = page.url();
  const linked = new URL(link).hash;
  check(linked.includes(`similar=${regionOf.id}`) && /region=10\.00%25/.test(linked) && linked.includes('k=20'),
    `the address names the stored image, its region and the settings (${linked})`);
  const tab = await context.newPage();
  tab.on('pageerror', (e) => problems.push('page error (tab): ' + e.message));
  tab.on('request', (r) => { if (!r.url().startsWith(origin) && !/^(data|blob):/.test(r.url())) problems.push('external request ' + r.url()); });
  const tabAsked = tab.waitForRequest((r) => r.url().includes('/similar?'));
  await tab.goto(link);
  const tabUrl = new URL((await tabAsked).url());
  check(tabUrl.pathname.endsWith(`/api/images/${regionOf.id}/similar`) &&
    tabUrl.searchParams.get('region') === similarUrl.searchParams.get('region') &&
    tabUrl.searchParams.get('qe') === similarUrl.searchParams.get('qe') && tabUrl.searchParams.get('k') === '20',
  `the link runs the same search in a new tab (${tabUrl.search})`);
  await waitForResults(tab);
  const tabList = await cards(tab);
  check(JSON.stringify(tabList.map((c) => [c.id, c.score])) === JSON.stringify(list.map((c) => [c.id, c.score])),
    `with the same results (${tabList.slice(0, 3).map((c) => c.id).join(', ')})`);
  check((await tab.textContent('#query-caption')).includes('#' + regionOf.id) &&
    await tab.inputValue('#region-input') === similarUrl.searchParams.get('region'),
  'its query caption names the image and its region field holds the region');
  await tab.selectOption('#filter-sex', 'F');
  await tab.waitForFunction(() => location.hash.includes('sex=F'));
  check(true, 'a filter changed there shows in its address');
  await tab.close();
  const hostile = `${origin}#similar=0x10&k=7&qe=2&sex=X&view=%3Cimg%3E&age=1000-5&one=yes&labels=${'A'.repeat(300)}|%00x&region=%3Cscript%3E`;
  const tab2 = await context.newPage();
  tab2.on('pageerror', (e) => problems.push('page error (hostile link): ' + e.message));
  let tab2Searched = 0;
  tab2.on('request', (r) => { if (/\/api\/(search|images\/\d+\/similar)/.test(r.url())) tab2Searched++; });
  await tab2.goto(hostile);
  await tab2.waitForFunction(() => /images/.test(document.getElementById('collection-info').textContent));
  await tab2.waitForTimeout(300);
  check(tab2Searched === 0 && await tab2.inputValue('#k-select') === '20' && await tab2.inputValue('#filter-sex') === '' &&
    await tab2.inputValue('#filter-view') === '' && await tab2.inputValue('#filter-age-min') === '' &&
    (await tab2.$$('#finding-chips .chip')).length === 0 && !(await tab2.isChecked('#filter-one-per-patient')),
  `a hostile address runs nothing and sets no control (${tab2Searched} searches)`);
  const typedAsked = tab2.waitForRequest((r) => r.url().includes(`/api/images/${regionOf.id}/similar?`));
  await tab2.evaluate((id) => { location.hash = `similar=${id}&k=5&labels=${encodeURIComponent('No Finding')}`; }, regionOf.id);
  const typedUrl = new URL((await typedAsked).url());
  check(typedUrl.searchParams.get('k') === '5' && typedUrl.searchParams.get('labels') === 'No Finding',
    `an address typed over the page runs its search (${typedUrl.search})`);
  await waitForResults(tab2);
  await tab2.close();

  // 17. Copies: the COVID-19 set holds one radiograph twice (patient 51's
  // lateral view, two files of other sizes). Opened in the viewer, each says
  // it is also stored as the other (GET .../copies), and the link opens it.
  const copyA = path.join(covidDir, '35AF5C3B-D04D-4B4B-92B7-CB1F67D83085.jpeg');
  const copyB = 'D5ACAA93-C779-4E22-ADFA-6A220489F840.jpeg';
  searched = page.waitForRequest((r) => r.url().includes('/api/search'));
  await page.setInputFiles('#file-input', copyA);
  await searched;
  await waitForResults(page);
  list = await cards(page);
  check(list[0].name === path.basename(copyA), `the copied radiograph finds itself first (${list[0].name})`);
  const copiesAsked = page.waitForResponse((r) => r.url().includes(`/api/images/${list[0].id}/copies`));
  await page.click('#grid .card:nth-child(1)');
  const copiesDoc = await (await copiesAsked).json();
  await page.waitForSelector('#v-meta .v-copies');
  const copiesText = await page.textContent('#v-meta .v-copies');
  const copyOf = (copiesDoc.copies || []).find((c) => c.original_name === copyB);
  check(copiesDoc.count === 1 && copyOf && copyOf.correlation > 0.99 && copiesText.includes('#' + copyOf.id) &&
    /patient 51 · COVID-19 · correlation 0\.99\d/.test(copiesText) && !/other patient/.test(copiesText),
  `the viewer says it is also stored as #${copyOf && copyOf.id} (${copiesText.trim()})`);
  await page.screenshot({ path: path.join(outDir, '17-copies.png') });
  await page.click('#v-meta .v-copies button');
  await page.waitForFunction((name) => document.getElementById('viewer-title').textContent.includes(name), copyB);
  await page.waitForSelector('#v-meta .v-copies');
  check((await page.textContent('#v-meta .v-copies')).includes('#' + list[0].id),
    'the link opens the copy, which names the first image back');
  await page.keyboard.press('Escape');
  await page.waitForSelector('#viewer', { state: 'hidden' });

  // 18. "Where alike": in the viewer the toggle asks the server for the
  // similarity map of the query and the result shown (POST with the query
  // file and the search's region), draws the result's cells over the image
  // and the query's over its preview (in the region's box), and the legend
  // gives the map's similarity. Page Down asks for the next result's map, a
  // result seen before comes from the cache, turning it off removes the
  // overlays, an error reply is shown without breaking the viewer, and a
  // stored query asks GET /api/images/{id}/similarity-map.
  searched = page.waitForRequest((r) => r.url().includes('/api/search'));
  await page.setInputFiles('#file-input', queryImage);
  await searched;
  await waitForResults(page);
  const mapRegion = '10%,10%,80%,80%';
  searched = page.waitForRequest((r) => r.url().includes('/api/search') && r.url().includes('region='));
  await page.fill('#region-input', mapRegion);
  await page.press('#region-input', 'Enter');
  await searched;
  await waitForResults(page);
  list = await cards(page);
  const mapRequests = [];
  page.on('request', (r) => { if (r.url().includes('/similarity-map')) mapRequests.push(r); });
  // The viewer canvas' warm pixels after the next frames: the X-ray is gray,
  // the overlay orange to yellow.
  const warmPixels = () => page.evaluate(() => new Promise((resolve) => requestAnimationFrame(() => requestAnimationFrame(() => {
    const c = document.getElementById('v-canvas');
    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    let n = 0;
    for (let i = 0; i < d.length; i += 4) if (d[i] - d[i + 2] > 40) n++;
    resolve(n);
  }))));
  const legendShows = (text) => page.waitForFunction((t) => document.getElementById('v-alike-legend').textContent.includes(t), text);
  await openFirstResult(page);
  check(await warmPixels() === 0 && await page.getAttribute('#v-alike', 'aria-pressed') === 'false', 'the viewer opens without a map');
  let mapAnswered = page.waitForResponse((r) => r.url().includes('/similarity-map'));
  await page.click('#v-alike');
  let mapResponse = await mapAnswered;
  const mapReq = mapResponse.request();
  const mapUrl = new URL(mapReq.url());
  check(mapReq.method() === 'POST' && mapUrl.pathname.endsWith('/api/similarity-map') && mapUrl.searchParams.get('with') === list[0].id &&
    mapUrl.searchParams.get('region') === mapRegion && /^multipart\/form-data/.test(mapReq.headers()['content-type'] || ''),
  `"Where alike" posts the query for the result shown with the region (${mapReq.method()} ${mapUrl.pathname}${mapUrl.search})`);
  const map = await mapResponse.json();
  const sum = (cells) => cells.flat().reduce((a, b) => a + b, 0);
  check(mapResponse.status() === 200 && map.with === Number(list[0].id) && map.query_cells.length === map.grid.height &&
    map.query_cells.every((row) => row.length === map.grid.width) && Math.abs(sum(map.query_cells) - map.similarity) < 1e-4 &&
    Math.abs(sum(map.result_cells) - map.similarity) < 1e-4,
  `the query's (and the result's) ${map.grid.width}x${map.grid.height} cells add up to the similarity ${map.similarity} (${sum(map.query_cells)})`);
  check(map.region && Math.abs(map.region.x - 102) <= 2 && Math.abs(map.region.width - 819) <= 2,
    `the map is of the region (${JSON.stringify(map.region)})`);
  await legendShows(map.similarity.toFixed(3));
  const legend = await page.textContent('#v-alike-legend');
  check(legend.includes(map.similarity_kind) && /without query expansion/.test(legend) && await page.getAttribute('#v-alike', 'aria-pressed') === 'true',
    `the legend gives the map's similarity (${legend})`);
  const positive = (cells) => cells.flat().filter((v) => v > 0).length;
  const warm = await warmPixels();
  check(positive(map.result_cells) > 0 && await page.getAttribute('#v-canvas', 'data-alike-cells') === String(positive(map.result_cells)) && warm > 1000,
    `the result's ${positive(map.result_cells)} positive cells are drawn over the image (${warm} warm pixels)`);
  const queryHeat = await page.evaluate(() => {
    const c = document.getElementById('query-heat');
    const a = c.getBoundingClientRect(), b = document.getElementById('region-box').getBoundingClientRect();
    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    let n = 0;
    for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++;
    return { hidden: c.hidden, cells: c.dataset.cells, coloured: n, offset: Math.max(Math.abs(a.left - b.left), Math.abs(a.top - b.top), Math.abs(a.width - b.width), Math.abs(a.height - b.height)),
      inset: !document.getElementById('v-alike-query').hidden };
  });
  check(!queryHeat.hidden && queryHeat.cells === String(positive(map.query_cells)) && queryHeat.coloured > 0 && queryHeat.offset < 1 && queryHeat.inset,
    `the query's cells lie over the region box of its preview, and the viewer shows them too (${JSON.stringify(queryHeat)})`);
  await page.screenshot({ path: path.join(outDir, '18-where-alike.png') });
  mapAnswered = page.waitForResponse((r) => r.url().includes('/similarity-map'));
  await page.focus('#v-canvas');
  await page.keyboard.press('PageDown');
  mapResponse = await mapAnswered;
  const nextMap = await mapResponse.json();
  check(new URL(mapResponse.url()).searchParams.get('with') === list[1].id && nextMap.with === Number(list[1].id),
    `Page Down asks for the next result's map (with=${new URL(mapResponse.url()).searchParams.get('with')})`);
  await legendShows(nextMap.similarity.toFixed(3));
  await page.waitForFunction(() => document.getElementById('v-loading').hidden, null, { timeout: 30000 });
  check(await page.getAttribute('#v-canvas', 'data-alike-cells') === String(positive(nextMap.result_cells)) && await warmPixels() > 0,
    'and draws it over the next image');
  const asked = mapRequests.length;
  await page.keyboard.press('PageUp');
  await legendShows(map.similarity.toFixed(3));
  await page.waitForFunction(() => document.getElementById('v-loading').hidden, null, { timeout: 30000 });
  check(mapRequests.length === asked && await warmPixels() > 0, 'back on the first result its map comes from the cache');
  await page.click('#v-alike');
  check(await page.getAttribute('#v-alike', 'aria-pressed') === 'false' && await warmPixels() === 0 &&
    await page.textContent('#v-alike-legend') === '' && !(await page.getAttribute('#v-canvas', 'data-alike-cells')) &&
    await page.isHidden('#query-heat') && await page.isHidden('#v-alike-query'), 'turning it off removes the overlays and the legend');
  // An error reply (a model that cannot be split) is shown; the viewer works on.
  const refusal = 'this model\'s output cannot be split into cells (browser test)';
  const refuse = (route) => route.fulfill({ status: 409, contentType: 'application/json',
    body: JSON.stringify({ error: { code: 'unsupported_model', message: refusal } }) });
  const isMap = (u) => u.pathname.endsWith('/similarity-map');
  await page.route(isMap, refuse);
  await page.focus('#v-canvas');
  await page.keyboard.press('PageDown');
  await page.keyboard.press('PageDown');
  await page.waitForFunction((id) => document.getElementById('viewer-title').textContent.startsWith(`Image #${id}`), list[2].id);
  mapAnswered = page.waitForResponse((r) => r.url().includes('/similarity-map') && r.status() === 409);
  await page.keyboard.press('a');
  await mapAnswered;
  await legendShows(refusal);
  await page.waitForFunction(() => document.getElementById('v-loading').hidden, null, { timeout: 30000 });
  check(await page.getAttribute('#v-alike-legend', 'class') === 'v-alike-legend v-alike-error' && await warmPixels() === 0 &&
    /W 256/.test(await page.textContent('#v-readout')) && await page.isHidden('#query-heat'),
  `a 409 shows the server's message, no overlay, the image still shown (${await page.textContent('#v-alike-legend')})`);
  await page.screenshot({ path: path.join(outDir, '18-where-alike-error.png') });
  await page.keyboard.press('PageDown');
  await page.waitForFunction((id) => document.getElementById('viewer-title').textContent.startsWith(`Image #${id}`), list[3].id);
  await legendShows(refusal);
  check(await page.textContent('#v-position') === `4 / ${list.length}`, 'and stepping on still works');
  await page.unroute(isMap, refuse);
  await page.keyboard.press('Escape');
  await page.waitForSelector('#viewer', { state: 'hidden' });
  check(await page.isHidden('#query-heat') && await page.getAttribute('#v-alike', 'aria-pressed') === 'false',
    'closing the viewer turns it off');
  // A stored image as the query: GET .../similarity-map of it.
  const mapOf = list[1];
  await page.click('#grid .card:nth-child(2)');
  await page.waitForSelector('#viewer:not([hidden])');
  await page.click('#v-similar');
  await page.waitForFunction((id) => document.getElementById('query-caption').textContent.includes('#' + id), mapOf.id);
  await waitForResults(page);
  list = await cards(page);
  await openFirstResult(page);
  mapAnswered = page.waitForResponse((r) => r.url().includes('/similarity-map'));
  await page.click('#v-alike');
  mapResponse = await mapAnswered;
  const storedMap = await mapResponse.json();
  const storedUrl = new URL(mapResponse.url());
  check(mapResponse.request().method() === 'GET' && storedUrl.pathname.endsWith(`/api/images/${mapOf.id}/similarity-map`) &&
    storedUrl.searchParams.get('with') === list[0].id && !storedUrl.searchParams.has('region') && storedMap.query_id === Number(mapOf.id),
  `a stored query asks GET ${storedUrl.pathname}${storedUrl.search}`);
  await legendShows(storedMap.similarity.toFixed(3));
  check(await warmPixels() > 0 && await page.isVisible('#v-alike-query'), 'and draws its map');
  await page.screenshot({ path: path.join(outDir, '18-where-alike-stored.png') });
  await page.keyboard.press('Escape');
  await page.waitForSelector('#viewer', { state: 'hidden' });

  // 19. Relevance feedback. Each result card has "More like this" and "Not
  // this" (toggles: one clears the other, pressed again unmarks, reachable
  // with Tab); the bar above the results counts the marks and shows a chip
  // of each. "Refine search" runs the same search with like= and unlike=
  // holding every mark so far: the marked images leave the results, which
  // are what GET /api/images/{id}/similar gives with those lists. Marks add
  // up over rounds, a removed chip leaves the lists, a change of settings
  // keeps them; a refused refine shows the server's message and keeps them;
  // the address carries them and a reload restores them; in the viewer L and
  // N mark the image shown; "Clear marks" and a new query clear them.
  const from19 = problems.length; // a 404 from here on is the refused refine's (or a made-up id's thumbnail)
  if (!(await page.isChecked('#qe-toggle'))) {
    await page.check('#qe-toggle');
    await waitForResults(page);
    list = await cards(page);
  }
  const fbQuery = list[0];
  await page.click('#grid .card:nth-child(1)');
  await page.waitForSelector('#viewer:not([hidden])');
  await page.click('#v-similar');
  await page.waitForFunction((id) => document.getElementById('query-caption').textContent.includes('#' + id), fbQuery.id);
  await waitForResults(page);
  list = await cards(page);
  check(list.length === 20 && await page.isHidden('#feedback') && (await page.$$('#grid .card[class*="marked-"]')).length === 0,
    `a stored query (#${fbQuery.id}): 20 results, no marks, no feedback bar`);
  const pressed = async (n) => [await page.getAttribute(`#grid .card:nth-child(${n}) .mark-like`, 'aria-pressed'),
    await page.getAttribute(`#grid .card:nth-child(${n}) .mark-unlike`, 'aria-pressed')].join();
  const chips = () => page.$$eval('#feedback-chips .fchip', (els) => els.map((e) => `${e.dataset.kind}:${e.dataset.id}`).join(' '));
  const fbCount = () => page.textContent('#feedback-count');
  check(await pressed(2) === 'false,false' && await page.getAttribute('#grid .card:nth-child(2) .mark-like', 'aria-label') ===
    `More like this (image ${list[1].id})`, 'each card has both buttons, unpressed, named with its image');
  await page.click('#grid .card:nth-child(2) .mark-like');
  check(await pressed(2) === 'true,false' && await page.isHidden('#viewer') && await page.isVisible('#feedback') &&
    await fbCount() === '1 like, 0 not', `More like this is pressed, opens no viewer, the bar shows (${await fbCount()})`);
  await page.click('#grid .card:nth-child(2) .mark-unlike');
  check(await pressed(2) === 'false,true' && await chips() === `unlike:${list[1].id}` &&
    await page.getAttribute('#grid .card:nth-child(2)', 'class') === 'card marked-unlike',
  `Not this on the same card clears its like (${await chips()})`);
  await page.click('#grid .card:nth-child(2) .mark-unlike');
  check(await pressed(2) === 'false,false' && await page.isHidden('#feedback'), 'pressed again it unmarks, and the bar goes');
  // With the keyboard: Tab from the card reaches its buttons; Enter and Space press them.
  await page.focus('#grid .card:nth-child(3)');
  await page.keyboard.press('Tab');
  check(await page.evaluate(() => document.activeElement.className) === 'mark mark-like', 'Tab from a card reaches its More like this');
  await page.keyboard.press('Enter');
  await page.focus('#grid .card:nth-child(4)');
  await page.keyboard.press('Tab');
  await page.keyboard.press('Tab');
  await page.keyboard.press('Space');
  await page.click('#grid .card:nth-child(6) .mark-like');
  const [likeA, unlikeB, likeC] = [list[2].id, list[3].id, list[5].id];
  check(await pressed(3) === 'true,false' && await pressed(4) === 'false,true' && await pressed(6) === 'true,false' &&
    await page.isHidden('#viewer'), 'Enter marks the third like, Space the fourth not, a click the sixth like');
  check(await fbCount() === '2 like, 1 not' && await chips() === `like:${likeA} unlike:${unlikeB} like:${likeC}` &&
    /Not applied yet/.test(await page.textContent('#feedback-note')),
  `the bar says ${await fbCount()} with a chip each (${await chips()})`);
  await page.waitForFunction(() => [...document.querySelectorAll('#feedback-chips img')].every((i) => i.complete && i.naturalWidth > 0));
  check(true, 'the chips show the thumbnails');
  await page.screenshot({ path: path.join(outDir, '19-feedback-marked.png') });
  // Refine: the same search with the marks; the API's answer for them.
  const similarOf = (r) => r.url().includes(`/api/images/${fbQuery.id}/similar?`);
  const refine = async (start = () => page.click('#feedback-refine')) => {
    const answered = page.waitForResponse(similarOf);
    await start();
    const res = await answered;
    const doc = await res.json();
    await waitForResults(page);
    return { url: new URL(res.url()), doc, list: await cards(page) };
  };
  const fromApi = async (k, qe, like, unlike) => {
    const q = `k=${k}&qe=${qe}` + (like.length ? `&like=${like.join(',')}` : '') + (unlike.length ? `&unlike=${unlike.join(',')}` : '');
    const doc = await (await apiAs(`/api/images/${fbQuery.id}/similar?${q}`)).json();
    return doc.results.map((r) => [String(r.id), Number(r.score).toFixed(3)]);
  };
  const shown = (l) => l.map((c) => [c.id, c.score]);
  const sent = (u) => `like=${u.searchParams.get('like')} unlike=${u.searchParams.get('unlike')}`;
  let round = await refine();
  check(sent(round.url) === `like=${likeA},${likeC} unlike=${unlikeB}` && round.url.searchParams.get('k') === '20' &&
    round.url.searchParams.get('qe') === '3', `Refine search sends the marks (${round.url.search})`);
  check(JSON.stringify(round.doc.feedback) === JSON.stringify({ like: [Number(likeA), Number(likeC)], unlike: [Number(unlikeB)] }),
    `the answer echoes them (${JSON.stringify(round.doc.feedback)})`);
  check(round.list.length === 20 && !round.list.some((c) => [likeA, unlikeB, likeC].includes(c.id)) && round.list.every((c) => c.id !== fbQuery.id),
    'the new results hold none of the marked images, nor the query');
  let api19 = await fromApi(20, 3, [likeA, likeC], [unlikeB]);
  check(JSON.stringify(shown(round.list)) === JSON.stringify(api19),
    `they are what the API gives for these marks (${round.list.slice(0, 4).map((c) => c.id).join(', ')})`);
  check(JSON.stringify(shown(round.list)) !== JSON.stringify(shown(list)), 'and not the results before');
  let status19 = await page.textContent('#status');
  check(/scores against the query moved by your feedback \(2 like, 1 not\), then expanded with its top 3/.test(status19),
    `the status line says the query moved (${status19})`);
  check(await chips() === `like:${likeA} unlike:${unlikeB} like:${likeC}` && /Applied/.test(await page.textContent('#feedback-note')) &&
    (await page.$$('#grid .card[class*="marked-"]')).length === 0, 'the marks stay in the bar as chips, applied');
  await page.screenshot({ path: path.join(outDir, '19-feedback-refined.png') });
  // A second round adds to the first.
  const likeD = round.list[0].id;
  await page.click('#grid .card:nth-child(1) .mark-like');
  round = await refine();
  check(sent(round.url) === `like=${likeA},${likeC},${likeD} unlike=${unlikeB}` && await fbCount() === '3 like, 1 not' &&
    !round.list.some((c) => [likeA, unlikeB, likeC, likeD].includes(c.id)), `a second round sends all marks so far (${sent(round.url)})`);
  check(JSON.stringify(shown(round.list)) === JSON.stringify(await fromApi(20, 3, [likeA, likeC, likeD], [unlikeB])),
    'and shows the API\'s results for them');
  // Removing a chip takes its image off the lists.
  await page.click(`#feedback-chips .fchip[data-id="${likeA}"] .fchip-remove`);
  check(await fbCount() === '2 like, 1 not' && await chips() === `unlike:${unlikeB} like:${likeC} like:${likeD}` &&
    /Not applied yet/.test(await page.textContent('#feedback-note')), `× removes a chip (${await chips()})`);
  round = await refine();
  check(sent(round.url) === `like=${likeC},${likeD} unlike=${unlikeB}` &&
    JSON.stringify(shown(round.list)) === JSON.stringify(await fromApi(20, 3, [likeC, likeD], [unlikeB])),
  `refined again it sends the shorter list, and shows the API's results (${sent(round.url)})`);
  // A change of settings keeps the marks and sends them.
  round = await refine(() => page.selectOption('#k-select', '10'));
  check(round.url.searchParams.get('k') === '10' && sent(round.url) === `like=${likeC},${likeD} unlike=${unlikeB}` &&
    round.list.length === 10 && await fbCount() === '2 like, 1 not', `k=10 keeps the marks and sends them (${round.url.search})`);
  // A refused refine (here: the server no longer has an image marked): its
  // message in the error box, the marks kept and the missing one flagged;
  // removed, the next refine works.
  const unlikeE = round.list[0].id;
  await page.click('#grid .card:nth-child(1) .mark-unlike');
  const gone = `no image with id ${unlikeE} (marked unlike) in the collection`;
  const notFound = (route) => route.fulfill({ status: 404, contentType: 'application/json',
    body: JSON.stringify({ error: { code: 'not_found', message: gone } }) });
  const isSimilar = (u) => u.pathname.endsWith(`/api/images/${fbQuery.id}/similar`);
  await page.route(isSimilar, notFound);
  const refused = page.waitForResponse((r) => similarOf(r) && r.status() === 404);
  await page.click('#feedback-refine');
  check(sent(new URL((await refused).url())) === `like=${likeC},${likeD} unlike=${unlikeB},${unlikeE}`, 'the refine sends the new mark too');
  await page.waitForSelector('#error:not([hidden])');
  const err19 = await page.textContent('#error');
  check(err19.includes(gone) && await page.isVisible('#feedback') && await fbCount() === '2 like, 2 not' &&
    await chips() === `unlike:${unlikeB} like:${likeC} like:${likeD} unlike:${unlikeE}`,
  `a 404 shows the server's message and the marks stay (${err19.trim()})`);
  check(await page.getAttribute(`#feedback-chips .fchip[data-id="${unlikeE}"]`, 'class') === 'fchip unlike missing' &&
    (await page.$$('#feedback-chips .fchip.missing')).length === 1, 'the chip of the missing image is flagged');
  await page.screenshot({ path: path.join(outDir, '19-feedback-error.png') });
  await page.unroute(isSimilar, notFound);
  await page.click(`#feedback-chips .fchip[data-id="${unlikeE}"] .fchip-remove`);
  round = await refine();
  check(await page.isHidden('#error') && sent(round.url) === `like=${likeC},${likeD} unlike=${unlikeB}` && round.list.length === 10,
    'with the chip removed the refine works again');
  // The address carries the marks; reloading it restores them and the results.
  const fbHash = new URL(page.url()).hash;
  check(fbHash.includes(`similar=${fbQuery.id}`) && fbHash.includes(`like=${likeC},${likeD}`) && fbHash.includes(`unlike=${unlikeB}`),
    `the address carries the marks (${fbHash})`);
  const beforeReload = shown(round.list);
  round = await refine(() => page.reload());
  check(sent(round.url) === `like=${likeC},${likeD} unlike=${unlikeB}` && round.url.searchParams.get('k') === '10',
    `the reloaded link searches with its marks (${round.url.search})`);
  check(JSON.stringify(shown(round.list)) === JSON.stringify(beforeReload) && await chips() === `like:${likeC} like:${likeD} unlike:${unlikeB}` &&
    await fbCount() === '2 like, 1 not' && /moved by your feedback \(2 like, 1 not\)/.test(await page.textContent('#status')),
  `and shows the same results, the marks in the bar (${await chips()})`);
  await page.waitForFunction(() => [...document.querySelectorAll('#feedback-chips img')].every((i) => i.complete && i.naturalWidth > 0));
  // A hand-made link: only positive whole ids count, an id on both lists on neither, at most 100 a list.
  round = await refine(() => page.evaluate(([c, b, id]) => {
    location.hash = `similar=${id}&k=10&like=${c},0,-3,1e3,x,${c},${b}&unlike=${b},abc`;
  }, [likeC, unlikeB, fbQuery.id]));
  check(sent(round.url) === `like=${likeC} unlike=null` && await chips() === `like:${likeC}`,
    `a hand-made link keeps only valid ids, an id on both lists on neither (${round.url.search})`);
  const many = Array.from({ length: 150 }, (_, i) => i + 1).filter((i) => String(i) !== fbQuery.id);
  // (whether all of these ids exist does not matter here: only what is sent)
  const manyAnswered = page.waitForResponse(similarOf);
  await page.evaluate(([ids, id]) => { location.hash = `similar=${id}&k=10&unlike=${ids}`; }, [many.join(','), fbQuery.id]);
  const manyUrl = new URL((await manyAnswered).url());
  check(manyUrl.searchParams.get('unlike') === many.slice(0, 100).join(',') && !manyUrl.searchParams.has('like') &&
    await fbCount() === '0 like, 100 not', 'a link\'s list is cut at 100 ids');
  // The viewer: L and N mark the image shown, as toggles, on its card and in the bar.
  round = await refine(() => page.evaluate(([c, d, b, id]) => { location.hash = `similar=${id}&k=20&like=${c},${d}&unlike=${b}`; },
    [likeC, likeD, unlikeB, fbQuery.id]));
  list = round.list;
  await openFirstResult(page);
  const vPressed = async () => [await page.getAttribute('#v-like', 'aria-pressed'), await page.getAttribute('#v-unlike', 'aria-pressed')].join();
  check(await vPressed() === 'false,false', 'the viewer shows the image unmarked');
  await page.focus('#v-canvas');
  await page.keyboard.press('l');
  check(await vPressed() === 'true,false' && await pressed(1) === 'true,false' && await fbCount() === '3 like, 1 not' &&
    (await chips()).endsWith(`like:${list[0].id}`), `L marks the image shown like, on its card and in the bar (${await fbCount()})`);
  await page.screenshot({ path: path.join(outDir, '19-feedback-viewer.png') });
  await page.keyboard.press('N');
  check(await vPressed() === 'false,true' && await pressed(1) === 'false,true' && await fbCount() === '2 like, 2 not',
    'N marks it not, clearing the like');
  await page.keyboard.press('n');
  check(await vPressed() === 'false,false' && await pressed(1) === 'false,false' && await fbCount() === '2 like, 1 not',
    'N again unmarks it');
  await page.keyboard.press('PageDown');
  await page.waitForFunction((id) => document.getElementById('viewer-title').textContent.startsWith(`Image #${id}`), list[1].id);
  await page.focus('#v-canvas');
  await page.keyboard.press('L');
  check(await vPressed() === 'true,false' && await pressed(2) === 'true,false' && await pressed(1) === 'false,false',
    'on the next image L marks that one');
  await page.keyboard.press('Escape');
  await page.waitForSelector('#viewer', { state: 'hidden' });
  round = await refine();
  check(sent(round.url) === `like=${likeC},${likeD},${list[1].id} unlike=${unlikeB}` && !round.list.some((c) => c.id === list[1].id),
    'the viewer\'s mark goes with the next refine');
  // Clear marks: the search without them again.
  round = await refine(() => page.click('#feedback-clear'));
  check(sent(round.url) === 'like=null unlike=null' && await page.isHidden('#feedback') &&
    (await page.$$('#grid .card[class*="marked-"]')).length === 0 && !/like=/.test(new URL(page.url()).hash) &&
    !/feedback/.test(await page.textContent('#status')), 'Clear marks searches without them; bar, marks and link entries gone');
  check(JSON.stringify(shown(round.list)) === JSON.stringify(await fromApi(20, 3, [], [])), 'and gives the plain results again');
  // A new query ("Find similar", an upload) starts without marks.
  await page.click('#grid .card:nth-child(2) .mark-like');
  await page.click('#grid .card:nth-child(3) .mark-unlike');
  const next19 = round.list[0];
  await page.click('#grid .card:nth-child(1)');
  await page.waitForSelector('#viewer:not([hidden])');
  const nextAsked = page.waitForRequest((r) => r.url().includes(`/api/images/${next19.id}/similar?`));
  await page.click('#v-similar');
  const nextUrl = new URL((await nextAsked).url());
  await waitForResults(page);
  check(sent(nextUrl) === 'like=null unlike=null' && await page.isHidden('#feedback') && (await page.$$('#grid .card[class*="marked-"]')).length === 0,
    'Find similar on another image clears the marks');
  await page.click('#grid .card:nth-child(1) .mark-like');
  let uploadAsked = page.waitForRequest((r) => r.url().includes('/api/search'));
  await page.setInputFiles('#file-input', queryImage);
  check(sent(new URL((await uploadAsked).url())) === 'like=null unlike=null', 'an upload clears them too');
  await waitForResults(page);
  check(await page.isHidden('#feedback') && (await page.$$('#grid .card[class*="marked-"]')).length === 0, 'and the bar');
  // An uploaded query refines the same way (POST /api/search with the lists).
  list = await cards(page);
  await page.click('#grid .card:nth-child(2) .mark-like');
  uploadAsked = page.waitForResponse((r) => r.url().includes('/api/search'));
  await page.click('#feedback-refine');
  const uploadRes = await uploadAsked;
  const uploadUrl = new URL(uploadRes.url());
  await waitForResults(page);
  check(uploadRes.request().method() === 'POST' && sent(uploadUrl) === `like=${list[1].id} unlike=null` &&
    !(await cards(page)).some((c) => c.id === list[1].id) && !new URL(page.url()).hash.includes('like='),
  `an upload's refine posts the marks (${uploadUrl.search}); its link carries none`);

  // 401, 409 and 412 above are expected answers (Chromium logs them as errors), and so are step 19's 404s.
  const unexpected = problems.filter((p, i) => !/status of (400|401|409|412)/.test(p) && !(i >= from19 && /status of 404/.test(p)));
  check(unexpected.length === 0, 'no page errors, console errors or external requests' +
    (unexpected.length ? ': ' + unexpected.join('; ') : ''));
} catch (e) {
  failed = true;
  console.error(`FAIL: ${e.message}`);
} finally {
  if (context) await context.close().catch(() => {});
  const code = await stopServer();
  if (code !== null && code !== 0) {
    failed = true;
    console.error(`FAIL: server exited with ${code} on SIGTERM`);
  }
  fs.rmSync(work, { recursive: true, force: true });
}
console.log(failed ? 'browser test failed' : `browser test passed; screenshots in ${outDir}`);
process.exit(failed ? 1 : 0);
