// The operator console: live calls pushed by Server-Sent Events, and the browser phone.
// No framework and no build step; every request carries the session cookie, and every
// state-changing one the session's CSRF token in X-CSRF-Token.
'use strict';

const $ = (id) => document.getElementById(id);
const state = { csrf: null, numbers: [], calls: new Map() };
window.consoleState = state; // for the browser tests

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'class') node.className = v; else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}

async function post(path, body) {
  const resp = await fetch(path, {
    method: 'POST',
    headers: { 'X-CSRF-Token': state.csrf, 'Content-Type': 'application/json' },
    body: body === undefined ? '{}' : JSON.stringify(body),
    credentials: 'same-origin',
  });
  if (resp.status === 401) location.reload();
  return resp;
}

// --- pages ------------------------------------------------------------------------------------

function showPage() {
  const name = (location.hash || '#live').slice(1);
  for (const page of document.querySelectorAll('.page')) page.hidden = page.id !== `page-${name}`;
  for (const a of document.querySelectorAll('nav a')) a.classList.toggle('active', a.dataset.page === name);
  if (typeof onPage === 'function' && state.csrf) onPage(name);
}

// --- live calls -------------------------------------------------------------------------------

function fmtDuration(s) {
  const m = Math.floor(s / 60), r = Math.floor(s % 60);
  return `${m}:${String(r).padStart(2, '0')}`;
}

function callCard(sid) {
  let entry = state.calls.get(sid);
  if (entry) return entry;
  const card = el('article', { class: 'call', 'data-call-sid': sid });
  const head = el('div', { class: 'call-head' });
  const hang = el('button', { type: 'button', class: 'danger hangup' }, 'Hang up');
  hang.addEventListener('click', async () => {
    hang.disabled = true;
    const resp = await post(`/console/api/calls/${encodeURIComponent(sid)}/hangup`);
    if (!resp.ok) hang.disabled = false;
  });
  const facts = el('div', { class: 'facts' });
  const transcript = el('ol', { class: 'transcript', 'aria-live': 'polite' });
  card.append(head, facts, transcript);
  $('live-calls').prepend(card);
  entry = { card, head, facts, transcript, hang, summary: null, since: 0, actions: 0, bargeIns: 0, ended: false };
  state.calls.set(sid, entry);
  updateCount();
  return entry;
}

function updateCount() {
  const live = [...state.calls.values()].filter((c) => !c.ended).length;
  $('live-count').textContent = live ? `(${live})` : '';
  $('live-empty').hidden = state.calls.size > 0;
}

function fact(name, value) {
  return el('span', {}, el('b', {}, `${name} `), String(value ?? '–'));
}

function addEvent(entry, text) {
  entry.transcript.append(el('li', { class: 'event' }, text));
  entry.transcript.scrollTop = entry.transcript.scrollHeight;
}

function renderCall(s) {
  const entry = callCard(s.call_sid);
  entry.summary = s;
  entry.since = performance.now() - (s.age_s || 0) * 1000;
  entry.head.replaceChildren(
    el('strong', {}, s.called || 'default line'),
    el('span', { class: 'sid' }, s.call_sid),
    entry.ended ? el('span', { class: 'muted' }, `ended: ${s.outcome || ''} ${s.end_reason || ''}`) : entry.hang,
  );
  const lat = s.turn_latency_ms || [];
  entry.facts.replaceChildren(
    fact('Profile', s.profile),
    fact('State', entry.ended ? 'ended' : `${s.phase} · ${s.state}`),
    el('span', { class: 'duration' }, el('b', {}, 'Duration '), fmtDuration(s.age_s || 0)),
    fact('Codec', s.codec),
    fact('Turns', s.turns),
    fact('Barge-ins', s.barge_ins),
    fact('Latency (last turns, ms)', lat.length ? lat.slice(-5).map(Math.round).join(', ') : '–'),
  );
  for (; entry.bargeIns < (s.barge_ins || 0); entry.bargeIns++) addEvent(entry, '⟂ barge-in: the caller spoke over the assistant');
  const actions = s.actions || [];
  for (; entry.actions < actions.length; entry.actions++) {
    const a = actions[entry.actions];
    addEvent(entry, `⚙ ${a.kind}${a.name ? ` ${a.name}` : ''}${a.ok === false ? ' (failed)' : ''}`);
  }
}

function addLine(line) {
  const entry = callCard(line.call_sid);
  const who = line.speaker === 'caller' ? 'Caller' : 'Assistant';
  entry.transcript.append(el('li', { class: line.speaker }, el('span', { class: 'who' }, who), line.text));
  entry.transcript.scrollTop = entry.transcript.scrollHeight;
}

function endCall(s) {
  const entry = state.calls.get(s.call_sid);
  if (!entry) return;
  entry.ended = true;
  if (s.phase) renderCall(s); else renderCall({ ...entry.summary, outcome: 'ended' });
  entry.card.classList.add('ended');
  updateCount();
  setTimeout(() => { entry.card.remove(); state.calls.delete(s.call_sid); updateCount(); }, 60000);
}

function tick() {
  for (const entry of state.calls.values()) {
    if (entry.ended) continue;
    const d = entry.card.querySelector('.duration');
    if (d) d.lastChild.textContent = fmtDuration((performance.now() - entry.since) / 1000);
  }
}

function listen() {
  const source = new EventSource('/console/api/events');
  source.onopen = () => { $('push-state').textContent = 'live'; };
  source.onerror = () => { $('push-state').textContent = 'reconnecting…'; };
  source.addEventListener('call', (e) => renderCall(JSON.parse(e.data)));
  source.addEventListener('line', (e) => addLine(JSON.parse(e.data)));
  source.addEventListener('ended', (e) => endCall(JSON.parse(e.data)));
}

// --- the browser phone ------------------------------------------------------------------------

const phone = { ws: null, ctx: null, mic: null, seq: 0, chunk: 0, streamSid: null, callSid: null,
  stats: { sent: 0, received: 0, played: 0, marks: 0, clears: 0, digits: '' } };
window.phone = phone; // for the browser tests

function phoneStat(name, value) {
  phone.stats[name] = value;
  const node = $(`phone-${name}`);
  if (node) node.textContent = String(value || (name === 'digits' ? '–' : 0));
}

function phoneState(text) { $('phone-state').textContent = text; }

function b64(bytes) {
  let s = '';
  for (let i = 0; i < bytes.length; i++) s += String.fromCharCode(bytes[i]);
  return btoa(s);
}

function unb64(text) {
  const s = atob(text), out = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
  return out;
}

function send(obj) {
  if (phone.ws && phone.ws.readyState === WebSocket.OPEN) phone.ws.send(JSON.stringify(obj));
}

function sequenced(event, body) {
  phone.seq += 1;
  return { event, sequenceNumber: String(phone.seq), streamSid: phone.streamSid, ...body };
}

async function startCall() {
  $('phone-call').disabled = true;
  phoneState('dialling…');
  for (const k of Object.keys(phone.stats)) phoneStat(k, k === 'digits' ? '' : 0);
  try {
    const resp = await post('/console/api/phone', { number: $('phone-number').value || null });
    if (!resp.ok) throw new Error((await resp.json()).detail || resp.statusText);
    const call = await resp.json();
    phone.mic = await navigator.mediaDevices.getUserMedia({
      audio: { echoCancellation: true, noiseSuppression: false, autoGainControl: false, channelCount: 1 },
    });
    phone.ctx = new AudioContext();
    await phone.ctx.audioWorklet.addModule('/console/static/phone-worklet.js');
    const capture = new AudioWorkletNode(phone.ctx, 'mulaw-capture');
    const player = new AudioWorkletNode(phone.ctx, 'mulaw-player', { outputChannelCount: [1] });
    phone.ctx.createMediaStreamSource(phone.mic).connect(capture);
    player.connect(phone.ctx.destination);
    phone.player = player;
    await phone.ctx.resume();
    phone.seq = 0; phone.chunk = 0;
    phone.callSid = call.call_sid;
    phone.streamSid = 'MZ' + [...crypto.getRandomValues(new Uint8Array(16))].map((b) => b.toString(16).padStart(2, '0')).join('');
    $('phone-sid').textContent = call.call_sid;
    const ws = new WebSocket(call.stream_url);
    phone.ws = ws;
    ws.onopen = () => {
      ws.send(JSON.stringify({ event: 'connected', protocol: 'Call', version: '1.0.0' }));
      send(sequenced('start', { start: {
        accountSid: call.account_sid, streamSid: phone.streamSid, callSid: call.call_sid,
        tracks: ['inbound'], customParameters: call.parameters,
        mediaFormat: { encoding: 'audio/x-mulaw', sampleRate: 8000, channels: 1 },
      } }));
      phoneState('in call');
      $('phone-hangup').disabled = false;
      capture.port.onmessage = (e) => {
        phone.chunk += 1;
        send(sequenced('media', { media: {
          track: 'inbound', chunk: String(phone.chunk), timestamp: String((phone.chunk - 1) * 20), payload: b64(e.data),
        } }));
        phoneStat('sent', phone.stats.sent + 1);
      };
    };
    player.port.onmessage = (e) => {
      const m = e.data;
      if (m.type === 'mark') {
        send(sequenced('mark', { mark: { name: m.name } }));
        phoneStat('marks', phone.stats.marks + 1);
      } else if (m.type === 'played') {
        phoneStat('played', m.frames);
        phone.stats.drained = m.drained; // bursts that ran dry: ends of speech, and underruns
      } else if (m.type === 'cleared') {
        phoneStat('clears', phone.stats.clears + 1);
      }
    };
    ws.onmessage = (e) => {
      const msg = JSON.parse(e.data);
      if (msg.event === 'media') {
        const bytes = unb64(msg.media.payload);
        player.port.postMessage({ type: 'audio', bytes });
        phoneStat('received', phone.stats.received + Math.max(1, Math.round(bytes.length / 160)));
      } else if (msg.event === 'mark') {
        player.port.postMessage({ type: 'mark', name: msg.mark.name });
      } else if (msg.event === 'clear') {
        player.port.postMessage({ type: 'clear' });
      }
    };
    ws.onclose = (e) => { teardown(`call ended${e.reason ? `: ${e.reason}` : ''} (${e.code})`); };
  } catch (err) {
    teardown(`failed: ${err.message || err}`);
  }
}

function hangUp() {
  send(sequenced('stop', { stop: { accountSid: 'AC' + '0'.repeat(32), callSid: phone.callSid } }));
  if (phone.ws) phone.ws.close(1000, 'caller hung up');
  teardown('hung up');
}

function teardown(why) {
  if (phone.mic) phone.mic.getTracks().forEach((t) => t.stop());
  if (phone.ctx) phone.ctx.close();
  phone.mic = phone.ctx = phone.ws = null;
  phoneState(why);
  $('phone-call').disabled = false;
  $('phone-hangup').disabled = true;
}

function keypad() {
  for (const digit of '123456789*0#') {
    const b = el('button', { type: 'button', 'data-digit': digit }, digit);
    b.addEventListener('click', () => {
      if (!phone.ws) return;
      send(sequenced('dtmf', { dtmf: { track: 'inbound_track', digit } }));
      phoneStat('digits', phone.stats.digits + digit);
    });
    $('keypad').append(b);
  }
}


// --- call history -----------------------------------------------------------------------------

async function getJson(path) {
  const resp = await fetch(path, { credentials: 'same-origin' });
  const body = await resp.json().catch(() => ({}));
  if (!resp.ok) throw new Error(body.detail || `${resp.status} ${resp.statusText}`);
  return body;
}

function showError(id, err) {
  const node = $(id);
  node.hidden = !err;
  node.textContent = err ? String(err.message || err) : '';
}

function isoOrEmpty(value) { return value ? new Date(value).toISOString() : ''; }

async function loadHistory(event) {
  if (event) event.preventDefault();
  const form = new FormData($('history-filter'));
  const q = new URLSearchParams({ limit: '200' });
  for (const key of ['number', 'outcome']) if (form.get(key)) q.set(key, form.get(key));
  for (const key of ['since', 'until']) if (form.get(key)) q.set(key, isoOrEmpty(form.get(key)));
  try {
    const { records } = await getJson(`/admin/records?${q}`);
    showError('history-error', null);
    const body = $('history-table').tBodies[0];
    body.replaceChildren(...records.map((r) => {
      const row = el('tr', { 'data-call-sid': r.call_sid },
        el('td', {}, new Date(r.started_at).toLocaleString()), el('td', {}, r.number),
        el('td', {}, r.outcome), el('td', {}, fmtDuration(r.duration_s || 0)), el('td', {}, String(r.turns)),
        el('td', {}, r.cost_usd == null ? '–' : `$${r.cost_usd.toFixed(4)}`));
      row.addEventListener('click', () => showRecord(r.call_sid));
      return row;
    }));
    if (!records.length) body.append(el('tr', {}, el('td', { colspan: '6', class: 'muted' }, 'No call matches.')));
  } catch (err) { showError('history-error', err); }
}

const charts = {};

function chart(id, opts, data) {
  const node = $(id);
  if (charts[id]) charts[id].destroy();
  node.replaceChildren();
  const width = Math.max(240, node.clientWidth || node.parentElement.clientWidth || 600);
  charts[id] = new uPlot({ width, height: opts.height || 180, ...opts }, data, node);
  return charts[id];
}

async function showRecord(sid) {
  try {
    const r = await getJson(`/admin/records/${encodeURIComponent(sid)}`);
    $('record').hidden = false;
    $('record-sid').textContent = sid;
    const lat = r.latency || {};
    $('record-facts').replaceChildren(
      fact('Number', r.number), fact('Profile', r.profile), fact('Outcome', r.outcome),
      fact('Reason', r.end_reason || '–'), fact('Duration', fmtDuration(r.duration_s || 0)),
      fact('Turns', r.turns), fact('Barge-ins', r.barge_ins), fact('Keypad', r.dtmf || '–'),
      fact('Setup ms', r.setup_ms), fact('Answer p50 ms', lat.answer_ms_p50),
      fact('Cost', r.cost_usd == null ? 'unpriced' : `$${r.cost_usd.toFixed(4)}`));
    // The timeline: transcript lines (kept for recent calls) and call-control steps.
    let lines = [];
    try {
      const calls = await getJson('/admin/calls');
      const recent = calls.recent.find((c) => c.call_sid === sid);
      if (recent) lines = recent.transcript || [];
    } catch (_) { /* the transcript is a bonus */ }
    const points = [
      ...lines.map((l) => ({ t: l.at_ms / 1000, lane: l.speaker === 'caller' ? 1 : 2, text: `${l.speaker}: ${l.text}` })),
      ...(r.actions || []).map((a) => ({ t: (a.at_ms || 0) / 1000, lane: 3, text: `⚙ ${a.kind}` })),
    ].sort((a, b) => a.t - b.t);
    $('record-events').replaceChildren(...points.map((p) => el('li', {}, `${p.t.toFixed(1)} s  ${p.text}`)));
    const xs = points.map((p) => p.t);
    const lane = (n) => points.map((p) => (p.lane === n ? n : null));
    chart('record-timeline', {
      height: 140, scales: { x: { time: false }, y: { range: [0.5, 3.5] } },
      axes: [{ label: 'seconds' }, { size: 80, values: (_u, ticks) => ticks.map((t) => ({ 1: 'caller', 2: 'assistant', 3: 'control' }[t] || '')), splits: () => [1, 2, 3] }],
      series: [{}, ...[['caller', '#0f766e'], ['assistant', '#6d28d9'], ['control', '#b45309']].map(([label, stroke]) => ({ label, stroke, width: 0, points: { show: true, size: 9, fill: stroke } }))],
    }, [xs, lane(1), lane(2), lane(3)]);
    const audio = $('record-audio');
    audio.hidden = !r.recording_path;
    $('record-levels').hidden = !r.recording_path;
    if (r.recording_path) {
      const url = `/console/api/records/${encodeURIComponent(sid)}/recording`;
      audio.src = url;
      drawLevels(url).catch((err) => showError('history-error', err));
    } else audio.removeAttribute('src');
  } catch (err) { showError('history-error', err); }
}

// The recording drawn as who spoke when: caller level up, assistant level down, 50 ms steps.
// Overlaps are barge-ins (or double talk), flat stretches are gaps.
async function drawLevels(url) {
  const resp = await fetch(url, { credentials: 'same-origin' });
  if (!resp.ok) throw new Error(`recording: ${resp.status}`);
  const ctx = new OfflineAudioContext(2, 1, 8000);
  const audio = await ctx.decodeAudioData(await resp.arrayBuffer());
  const step = Math.round(audio.sampleRate * 0.05);
  const level = (ch) => {
    const data = audio.getChannelData(Math.min(ch, audio.numberOfChannels - 1)), out = [];
    for (let i = 0; i < data.length; i += step) {
      let sum = 0;
      const end = Math.min(data.length, i + step);
      for (let j = i; j < end; j++) sum += data[j] * data[j];
      out.push(Math.sqrt(sum / Math.max(1, end - i)));
    }
    return out;
  };
  const caller = level(0), assistant = level(1).map((v) => -v);
  const xs = caller.map((_v, i) => (i * step) / audio.sampleRate);
  chart('record-levels', {
    height: 160, scales: { x: { time: false } },
    axes: [{ label: 'seconds' }, { size: 80, values: (_u, ticks) => ticks.map((t) => (t > 0 ? 'caller' : t < 0 ? 'assistant' : '')) }],
    series: [{}, { label: 'caller', stroke: '#0f766e', fill: 'rgba(15,118,110,.25)', points: { show: false } },
      { label: 'assistant', stroke: '#6d28d9', fill: 'rgba(109,40,217,.25)', points: { show: false } }],
  }, [xs, caller, assistant]);
  $('record-levels').dataset.seconds = String(audio.duration);
}

// --- usage and cost ---------------------------------------------------------------------------

async function loadUsage() {
  try {
    const [{ numbers, total }, { records }] = await Promise.all([
      getJson('/admin/usage'), getJson('/admin/records?limit=1000'),
    ]);
    showError('usage-error', null);
    $('usage-total').replaceChildren(fact('Calls', total.calls), fact('Minutes', (total.duration_s / 60).toFixed(1)),
      fact('Cost', `$${total.cost_usd.toFixed(4)}`), fact('Unpriced calls', total.unpriced_calls));
    $('usage-table').tBodies[0].replaceChildren(...numbers.map((n) => el('tr', {},
      el('td', {}, n.number), el('td', {}, String(n.calls)), el('td', {}, (n.duration_s / 60).toFixed(1)),
      el('td', {}, n.cost_usd.toFixed(4)), el('td', {}, String(n.unpriced_calls)))));
    // Cost per day and number, from the records (the newest thousand).
    const day = (iso) => Math.floor(new Date(iso).getTime() / 86400000) * 86400;
    // every day of the last two weeks (zero when quiet), and any older day with calls
    const today = day(new Date().toISOString());
    const recentDays = Array.from({ length: 14 }, (_v, i) => today - (13 - i) * 86400);
    const days = [...new Set([...recentDays, ...records.map((r) => day(r.started_at))])].sort((a, b) => a - b);
    const names = [...new Set(records.map((r) => r.number))].sort();
    const series = names.map((name) => days.map((d) => records
      .filter((r) => r.number === name && day(r.started_at) === d)
      .reduce((sum, r) => sum + (r.cost_usd || 0), 0)));
    const palette = ['#1f6feb', '#0f766e', '#6d28d9', '#b45309', '#be123c', '#4d7c0f'];
    const totals = days.map((_d, i) => series.reduce((sum, s) => sum + s[i], 0));
    chart('usage-chart', {
      height: 220, axes: [{}, { label: 'USD per day', size: 70 }],
      series: [{}, { label: 'total', stroke: '#111827', width: 3, points: { show: true } },
        ...names.map((label, i) => ({ label, stroke: palette[i % palette.length], width: 2, points: { show: true } }))],
    }, [days, totals, ...series]);
  } catch (err) { showError('usage-error', err); }
}

// --- health -----------------------------------------------------------------------------------

const healthSeries = { t: [], live: [], capacity: [], inbound: [], outbound: [], lag: [], errors: [] };
let healthTimer = null;

async function sampleHealth() {
  try {
    const h = await getJson('/console/api/health');
    const errors = Object.values(h.upstream_errors).reduce((a, b) => a + b, 0);
    const s = healthSeries;
    if (!s.t.length) { // start the axis five minutes back, so one sample does not span years
      s.t.push(Date.now() / 1000 - 300);
      for (const k of Object.keys(s)) if (k !== 't') s[k].push(null);
    }
    s.t.push(Date.now() / 1000); s.live.push(h.live_calls); s.capacity.push(h.capacity);
    s.inbound.push(h.added_latency_p99_ms.inbound); s.outbound.push(h.added_latency_p99_ms.outbound);
    s.lag.push(h.event_loop_lag_ms); s.errors.push(errors);
    for (const k of Object.keys(s)) if (s[k].length > 360) s[k].shift();
    $('health-facts').replaceChildren(fact('Live calls', `${h.live_calls} of ${h.capacity}`),
      fact('Draining', h.draining ? 'yes' : 'no'),
      fact('Added p99 in/out ms', `${h.added_latency_p99_ms.inbound ?? '–'} / ${h.added_latency_p99_ms.outbound ?? '–'}`),
      fact('Loop lag ms', h.event_loop_lag_ms), fact('Upstream errors', errors));
    const line = (label, stroke) => ({ label, stroke, width: 2 });
    chart('health-calls', { series: [{}, line('live', '#1f6feb'), line('capacity', '#9ca3af')] }, [s.t, s.live, s.capacity]);
    chart('health-latency', { series: [{}, line('inbound', '#0f766e'), line('outbound', '#6d28d9')] }, [s.t, s.inbound, s.outbound]);
    chart('health-lag', { series: [{}, line('lag', '#b45309')] }, [s.t, s.lag]);
    chart('health-errors', { series: [{}, line('errors', '#be123c')] }, [s.t, s.errors]);
  } catch (err) { $('health-facts').replaceChildren(el('span', { class: 'error' }, String(err.message || err))); }
}

// --- profiles ---------------------------------------------------------------------------------

function profileCard(title, p) {
  const td = p.turn_detection ? `${p.turn_detection.type}` : 'off (push to talk)';
  const t = p.tools || {}, targets = Object.keys(t.transfer_call || {});
  const tools = [t.end_call ? 'end_call' : '', targets.length ? `transfer_call (${targets.join(', ')})` : '']
    .filter(Boolean).join(', ') || 'none';
  const rows = [['Instructions', p.instructions], ['Greeting', p.greeting ?? 'none'], ['Voice', p.voice],
    ['Model', p.model], ['Turn detection', td], ['Tools', tools],
    ['Budget', p.max_cost_usd == null ? 'none' : `$${p.max_cost_usd}`], ['Max call', `${p.max_call_seconds} s`],
    ['Codec', p.upstream_codec || 'gateway default'], ['Records audio', p.record ? 'yes' : 'no']];
  return el('article', { class: 'profile' }, el('h3', {}, title),
    el('dl', {}, ...rows.flatMap(([k, v]) => [el('dt', {}, k), el('dd', {}, String(v))])));
}

async function loadProfiles() {
  try {
    const p = await getJson('/console/api/profiles');
    $('profiles-file').textContent = p.file ? `From ${p.file}` : 'Built-in profiles (no GATEWAY_PROFILES_FILE).';
    showError('profiles-error', p.file_error ? `The file on disk is invalid, so the profiles below are the last good ones: ${p.file_error}` : null);
    $('profiles-list').replaceChildren(profileCard('Default (any other number)', p.default),
      ...Object.entries(p.numbers).map(([n, prof]) => profileCard(`${n} · ${prof.name}`, prof)));
  } catch (err) { showError('profiles-error', err); }
}

async function reloadProfiles() {
  const resp = await post('/admin/reload');
  const body = await resp.json().catch(() => ({}));
  $('profiles-status').textContent = resp.ok ? `Reloaded (${body.numbers.length} numbers).` : `Not reloaded: ${body.error || body.detail}`;
  await loadProfiles();
}

function onPage(name) {
  clearInterval(healthTimer);
  if (name === 'history') loadHistory();
  else if (name === 'usage') loadUsage();
  else if (name === 'profiles') loadProfiles();
  else if (name === 'health') { sampleHealth(); healthTimer = setInterval(sampleHealth, 5000); }
}

// --- start ------------------------------------------------------------------------------------

async function main() {
  const resp = await fetch('/console/api/session', { credentials: 'same-origin' });
  if (!resp.ok) { location.reload(); return; }
  const session = await resp.json();
  state.csrf = session.csrf_token;
  state.numbers = session.numbers;
  const select = $('phone-number');
  select.append(el('option', { value: '' }, 'default profile'));
  for (const n of session.numbers) select.append(el('option', { value: n.number }, `${n.number} (${n.profile})`));
  $('logout').addEventListener('click', async () => { await post('/console/logout'); location.reload(); });
  $('phone-call').addEventListener('click', startCall);
  $('phone-hangup').addEventListener('click', hangUp);
  keypad();
  $('history-filter').addEventListener('submit', loadHistory);
  $('profiles-reload').addEventListener('click', reloadProfiles);
  window.addEventListener('hashchange', showPage);
  showPage();
  listen();
  setInterval(tick, 1000);
  document.body.dataset.ready = 'true';
}

main();
