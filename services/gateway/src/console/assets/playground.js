// The playground: speaks through POST /v1/tts with word timings (JSON lines), plays the audio as
// it arrives (MP3 through Media Source Extensions; other formats once complete, from a blob URL),
// shows the time to first audio and highlights each word while it is heard.
"use strict";

(function () {
  const form = document.getElementById("playground");
  if (!form) return;
  const $ = (id) => document.getElementById(id);
  const audio = $("pg-audio");
  const voice = $("pg-voice");
  const speaker = $("pg-speaker");
  const status = $("pg-status");
  const wordsBox = $("pg-words");
  let words = [];
  let spans = [];

  function fillSpeakers() {
    const option = voice.selectedOptions[0];
    let speakers = [];
    try { speakers = JSON.parse((option && option.dataset.speakers) || "[]") || []; } catch (_) { speakers = []; }
    speaker.textContent = "";
    const first = document.createElement("option");
    first.value = "";
    first.textContent = "Default";
    speaker.append(first);
    for (const s of speakers) {
      const o = document.createElement("option");
      o.value = String(s.id);
      o.textContent = s.name ? `${s.name} (${s.id})` : String(s.id);
      speaker.append(o);
    }
    speaker.disabled = speakers.length === 0;
  }
  voice.addEventListener("change", fillSpeakers);
  fillSpeakers();

  function request() {
    const body = { text: $("pg-text").value, format: $("pg-format").value };
    if (voice.value) body.voice = voice.value;
    if (speaker.value !== "") body.speaker = Number.parseInt(speaker.value, 10);
    const speed = Number.parseFloat($("pg-speed").value);
    if (!Number.isNaN(speed) && speed !== 1) body.speed = speed;
    if ($("pg-type").value) body.text_type = $("pg-type").value;
    return body;
  }

  function shellQuote(text) {
    return "'" + text.replace(/'/g, "'\\''") + "'";
  }

  function curl() {
    const body = request();
    const ext = body.format === "opus" ? "ogg" : body.format;
    return `curl -sS ${location.origin}/v1/tts \\\n  -H "x-api-key: $SONORA_API_KEY" \\\n  -H 'content-type: application/json' \\\n  -d ${shellQuote(JSON.stringify(body))} \\\n  -o speech.${ext}`;
  }

  $("pg-copy-curl").addEventListener("click", async () => {
    const command = curl();
    $("pg-curl").textContent = command;
    try {
      await navigator.clipboard.writeText(command);
      status.textContent = "The curl command is copied.";
    } catch (_) {
      status.textContent = "The curl command is shown below; copy it from there.";
    }
  });

  function addWords(list) {
    for (const w of list) {
      const span = document.createElement("span");
      span.textContent = w.word;
      wordsBox.append(span, " ");
      words.push(w);
      spans.push(span);
    }
  }

  audio.addEventListener("timeupdate", () => {
    const t = audio.currentTime;
    words.forEach((w, i) => spans[i].classList.toggle("now", t >= w.start && t <= w.end + 0.05));
  });
  audio.addEventListener("durationchange", () => {
    if (Number.isFinite(audio.duration)) $("pg-duration").textContent = `${audio.duration.toFixed(2)} s`;
  });

  function decode(b64) {
    const raw = atob(b64);
    const bytes = new Uint8Array(raw.length);
    for (let i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
    return bytes;
  }

  // An appender to a MediaSource that queues chunks while the buffer is busy.
  function streamTo(mime) {
    const source = new MediaSource();
    audio.src = URL.createObjectURL(source);
    const queue = [];
    let buffer = null;
    let ended = false;
    const pump = () => {
      if (!buffer || buffer.updating) return;
      if (queue.length) buffer.appendBuffer(queue.shift());
      else if (ended && source.readyState === "open") source.endOfStream();
    };
    source.addEventListener("sourceopen", () => {
      buffer = source.addSourceBuffer(mime);
      buffer.addEventListener("updateend", pump);
      pump();
    });
    return {
      push(bytes) { queue.push(bytes); pump(); },
      end() { ended = true; pump(); },
    };
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = request();
    body.timestamps = true;
    const speak = $("pg-speak");
    speak.disabled = true;
    words = [];
    spans = [];
    wordsBox.textContent = "";
    $("pg-ttfa").textContent = "—";
    $("pg-duration").textContent = "—";
    status.textContent = "Speaking…";
    const mimes = { mp3: "audio/mpeg", wav: "audio/wav", opus: "audio/ogg", flac: "audio/flac" };
    const mime = mimes[body.format] || "application/octet-stream";
    const streaming = body.format === "mp3" && window.MediaSource && MediaSource.isTypeSupported("audio/mpeg");
    const started = performance.now();
    let first = true;
    const chunks = [];
    const stream = streaming ? streamTo(mime) : null;
    try {
      const response = await fetch("/v1/tts", {
        method: "POST",
        headers: {
          "content-type": "application/json",
          "x-csrf-token": document.querySelector('meta[name="csrf-token"]').content,
        },
        body: JSON.stringify(body),
      });
      if (!response.ok) {
        let detail = `HTTP ${response.status}`;
        try { const p = await response.json(); detail = p.detail || p.title || detail; } catch (_) { /* not JSON */ }
        throw new Error(detail);
      }
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let rest = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (value) rest += decoder.decode(value, { stream: true });
        const lines = rest.split("\n");
        rest = done ? "" : lines.pop();
        for (const line of lines) {
          if (!line.trim()) continue;
          const part = JSON.parse(line);
          if (part.error) throw new Error(part.error.detail || part.error);
          if (part.words) addWords(part.words);
          if (part.audio) {
            const bytes = decode(part.audio);
            if (first) {
              first = false;
              $("pg-ttfa").textContent = `${Math.round(performance.now() - started)} ms`;
            }
            if (stream) {
              stream.push(bytes);
              if (audio.paused) audio.play().catch(() => {});
            } else {
              chunks.push(bytes);
            }
          }
          if (part.done) status.textContent = `Spoken: ${Number(part.audio_seconds).toFixed(2)} s of audio.`;
        }
        if (done) break;
      }
      if (stream) {
        stream.end();
      } else {
        audio.src = URL.createObjectURL(new Blob(chunks, { type: mime }));
        await audio.play().catch(() => {});
      }
    } catch (error) {
      status.textContent = `Speech failed: ${error.message}`;
    } finally {
      speak.disabled = false;
    }
  });
})();
