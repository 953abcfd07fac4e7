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
  window.addEventListener('hashchange', showPage);
  showPage();
  listen();
  setInterval(tick, 1000);
  document.body.dataset.ready = 'true';
}

main();
