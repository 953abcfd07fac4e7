// The browser phone's audio, on the audio thread: what a Twilio carrier does to a call's media.
//
// "mulaw-capture": microphone at the context's rate -> low-pass -> 8 kHz -> G.711 μ-law, posted
// as one 160-byte frame per 20 ms.
// "mulaw-player": the gateway's μ-law frames and marks in one queue, played in order at the
// context's rate; a mark is echoed (posted back) when the audio before it has been played, and
// "clear" drops the queue at once and echoes every pending mark, as Twilio does. Each burst of
// audio starts once 60 ms are queued (or after 60 ms, if less ever comes): a jitter buffer, so
// frames that arrive a little late do not break the sound into clicks.

const FRAME = 160; // 20 ms at 8 kHz
const RATE = 8000;
const PREBUFFER = 480; // 60 ms at 8 kHz

function mulawEncode(sample) { // sample: float in [-1, 1]
  const BIAS = 0x84, CLIP = 32635;
  let s = Math.max(-1, Math.min(1, sample)) * 32767;
  const sign = s < 0 ? 0x80 : 0;
  if (s < 0) s = -s;
  s = Math.min(CLIP, Math.round(s)) + BIAS;
  let exponent = 7;
  for (let mask = 0x4000; (s & mask) === 0 && exponent > 0; mask >>= 1) exponent--;
  const mantissa = (s >> (exponent + 3)) & 0x0f;
  return ~(sign | (exponent << 4) | mantissa) & 0xff;
}

const DECODE = new Float32Array(256);
for (let i = 0; i < 256; i++) {
  const u = ~i & 0xff;
  const exponent = (u >> 4) & 0x07;
  const mantissa = u & 0x0f;
  let s = (((mantissa << 3) + 0x84) << exponent) - 0x84;
  DECODE[i] = ((u & 0x80) ? -s : s) / 32768;
}

function lowPass(cutoff, rate, taps) { // windowed-sinc FIR, unity gain at DC
  const h = new Float32Array(taps), mid = (taps - 1) / 2, fc = cutoff / rate;
  let sum = 0;
  for (let n = 0; n < taps; n++) {
    const x = n - mid;
    const sinc = x === 0 ? 2 * fc : Math.sin(2 * Math.PI * fc * x) / (Math.PI * x);
    const w = 0.54 - 0.46 * Math.cos((2 * Math.PI * n) / (taps - 1));
    h[n] = sinc * w;
    sum += h[n];
  }
  for (let n = 0; n < taps; n++) h[n] /= sum;
  return h;
}

class MulawCapture extends AudioWorkletProcessor {
  constructor() {
    super();
    this.step = sampleRate / RATE; // input samples per output sample
    this.taps = lowPass(3600, sampleRate, 63);
    this.history = new Float32Array(this.taps.length);
    this.hpos = 0;
    this.next = 0; // input index (since start) of the next output sample
    this.seen = 0; // input samples seen so far
    this.prev = 0; // last filtered sample, for interpolation
    this.frame = new Uint8Array(FRAME);
    this.fill = 0;
  }
  filtered(x) {
    const h = this.history, taps = this.taps, n = h.length;
    h[this.hpos] = x;
    this.hpos = (this.hpos + 1) % n;
    let acc = 0;
    for (let k = 0, j = this.hpos; k < n; k++, j = (j + 1) % n) acc += taps[k] * h[j];
    return acc;
  }
  process(inputs) {
    const channel = inputs[0] && inputs[0][0];
    if (!channel) return true;
    for (let i = 0; i < channel.length; i++) {
      const y = this.filtered(channel[i]);
      const index = this.seen++;
      while (this.next <= index) {
        const frac = this.next - (index - 1);
        const value = this.prev + (y - this.prev) * Math.max(0, Math.min(1, frac));
        this.frame[this.fill++] = mulawEncode(value);
        this.next += this.step;
        if (this.fill === FRAME) {
          this.port.postMessage(this.frame.slice(0));
          this.fill = 0;
        }
      }
      this.prev = y;
    }
    return true;
  }
}

class MulawPlayer extends AudioWorkletProcessor {
  constructor() {
    super();
    this.step = RATE / sampleRate; // 8 kHz samples per output sample
    this.queue = []; // {audio: Float32Array} | {mark: name}
    this.offset = 0; // fractional position in queue[0].audio
    this.last = 0;
    this.played = 0; // 8 kHz samples played
    this.reported = 0;
    this.queued = 0; // 8 kHz samples of audio in the queue
    this.buffering = true; // waiting for PREBUFFER before a burst plays
    this.waited = 0; // output samples waited with audio queued
    this.drained = 0;
    this.port.onmessage = (e) => this.command(e.data);
  }
  command(msg) {
    if (msg.type === 'audio') {
      const audio = new Float32Array(msg.bytes.length);
      for (let i = 0; i < audio.length; i++) audio[i] = DECODE[msg.bytes[i]];
      this.queue.push({ audio });
      this.queued += audio.length;
    } else if (msg.type === 'mark') {
      this.queue.push({ mark: msg.name });
      this.flushMarks();
    } else if (msg.type === 'clear') {
      for (const item of this.queue) {
        if (item.mark !== undefined) this.port.postMessage({ type: 'mark', name: item.mark, played: false });
      }
      this.queue = [];
      this.offset = 0;
      this.queued = 0;
      this.buffering = true;
      this.waited = 0;
      this.port.postMessage({ type: 'cleared' });
    }
  }
  flushMarks() { // marks at the head of the queue: everything before them has been played
    while (this.queue.length && this.queue[0].mark !== undefined) {
      this.port.postMessage({ type: 'mark', name: this.queue.shift().mark, played: true });
    }
  }
  process(_inputs, outputs) {
    const out = outputs[0][0];
    for (let i = 0; i < out.length; i++) {
      this.flushMarks();
      const head = this.queue[0];
      if (!head) {
        if (!this.buffering) { this.buffering = true; this.waited = 0; this.drained++; }
        out[i] = 0;
        continue;
      }
      if (this.buffering) {
        if (this.queued < PREBUFFER && this.waited < PREBUFFER / this.step) {
          this.waited++;
          out[i] = 0;
          continue;
        }
        this.buffering = false;
      }
      const a = head.audio;
      const k = Math.floor(this.offset);
      const frac = this.offset - k;
      const next = k + 1 < a.length ? a[k + 1] : (this.queue[1] && this.queue[1].audio ? this.queue[1].audio[0] : a[k]);
      out[i] = a[k] + (next - a[k]) * frac;
      this.offset += this.step;
      if (this.offset >= a.length) {
        this.offset -= a.length;
        this.played += a.length;
        this.queued -= a.length;
        this.queue.shift();
      }
    }
    for (let c = 1; c < outputs[0].length; c++) outputs[0][c].set(out);
    if (this.played - this.reported >= FRAME) {
      this.reported = this.played;
      this.port.postMessage({ type: 'played', frames: Math.floor(this.played / FRAME), drained: this.drained });
    }
    return true;
  }
}

registerProcessor('mulaw-capture', MulawCapture);
registerProcessor('mulaw-player', MulawPlayer);
