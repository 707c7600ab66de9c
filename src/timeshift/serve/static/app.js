// The page of `timeshift serve`: live camera recognition over the WebSocket /api/stream and
// uploaded videos through POST /api/predict. Plain browser JavaScript, no build step; the
// page's Content-Security-Policy allows no inline script or style, so styles that depend on
// data (bar widths, label colours) are set through the CSSOM (element.style), which it allows.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);

  const CHART_SECONDS = 10;
  const FPS_WINDOW_MS = 2000; // frames/s delivered: results received in the last 2 s
  const SHOWN_RTT = 15; // the round trip shown: the median of the last 15 frames
  const MAX_SAMPLES = 20000; // per-frame measurements kept for window.timeshiftStats

  // measured per frame, for people and for tests (the browser test reads them)
  const stats = {
    frames: 0, // results shown
    rttMs: [], // client send -> label shown (in the DOM)
    latencyMs: [], // the model's own step, measured by the server
    serverMs: [], // decode + preprocess + step on the server
    encodeMs: [], // canvas draw + JPEG encode in the browser
    sentAt: [], // performance.now() of each frame's send
    shownAt: [], // performance.now() of its result shown
    fps: 0, // frames/s delivered (the last 2 s)
    errors: [], // frame errors the server answered
    close: null, // {code, reason} of the last closed connection
    upload: { phases: [], progress: [] }, // the last upload: its phases, its progress (%)
  };
  window.timeshiftStats = stats;

  let model = null; // GET /api/model

  // -- helpers ---------------------------------------------------------------------------------
  // a distinct, stable colour per class index: a categorical palette (tab10, reordered), then
  // golden-angle hues
  const PALETTE = [
    "#d62728", "#2ca02c", "#1f77b4", "#ff7f0e", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
  ];
  function colour(index) {
    if (index < PALETTE.length) return PALETTE[index];
    return `hsl(${Math.round((index * 137.508) % 360)}, 55%, 45%)`;
  }

  function percent(score) {
    return `${(100 * score).toFixed(1)}%`;
  }

  function median(values) {
    if (!values.length) return NaN;
    const sorted = [...values].sort((a, b) => a - b);
    const mid = sorted.length >> 1;
    return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
  }

  function push(list, value) {
    list.push(value);
    if (list.length > MAX_SAMPLES) list.shift();
  }

  function setStatus(element, state, text) {
    element.dataset.state = state;
    element.textContent = text;
  }

  function uploadPhase(phase) {
    const phases = stats.upload.phases;
    if (phases[phases.length - 1] !== phase) phases.push(phase);
  }

  // top-k as rows: name, a bar, the score
  function renderTopK(list, topK) {
    const rows = topK.map((entry) => {
      const row = document.createElement("li");
      row.dataset.label = entry.label;
      const name = document.createElement("span");
      name.className = "name";
      name.textContent = entry.label;
      name.title = entry.label;
      const bar = document.createElement("span");
      bar.className = "bar";
      const fill = document.createElement("span");
      fill.className = "fill";
      fill.style.display = "block";
      fill.style.width = percent(Math.max(0, Math.min(1, entry.score)));
      fill.style.background = colour(entry.index);
      bar.appendChild(fill);
      const value = document.createElement("span");
      value.className = "value";
      value.textContent = percent(entry.score);
      row.append(name, bar, value);
      return row;
    });
    list.replaceChildren(...rows);
    list.dataset.top1 = topK.length ? topK[0].label : "";
  }

  function renderLegend(list, entries) {
    list.replaceChildren(
      ...entries.map(({ index, label }) => {
        const item = document.createElement("li");
        const swatch = document.createElement("span");
        swatch.className = "swatch";
        swatch.style.background = colour(index);
        item.append(swatch, document.createTextNode(label));
        return item;
      }),
    );
  }

  // -- the model -------------------------------------------------------------------------------
  async function loadModel() {
    const box = $("model");
    try {
      const response = await fetch("/api/model", { cache: "no-store" });
      if (!response.ok) throw new Error(`GET /api/model answered ${response.status}`);
      model = await response.json();
    } catch (error) {
      const message = $("model-error");
      message.hidden = false;
      message.textContent = `cannot read the model from the server: ${error.message}`;
      return;
    }
    $("model-name").textContent = model.name;
    $("model-mode").textContent =
      model.mode === "online" ? "online (frame by frame)" : `window (${model.window_seconds} s)`;
    $("model-classes").textContent = String(model.num_classes);
    $("model-backend").textContent = `${model.backend} / ${model.precision}`;
    $("model-fps").textContent = `${model.fps} frames/s`;
    box.dataset.loaded = "true";
    box.dataset.mode = model.mode;
    box.dataset.numClasses = String(model.num_classes);
    $("upload-limit").textContent = `up to ${model.max_upload_mb} MB`;
    if (navigator.mediaDevices && navigator.mediaDevices.getUserMedia) {
      $("live-start").disabled = false;
    } else {
      setStatus($("live-status"), "error", "no camera access: open the page on localhost or https");
    }
  }

  // -- live ------------------------------------------------------------------------------------
  const live = {
    stream: null, // the camera's MediaStream
    socket: null,
    running: false, // frames are being sent
    stopping: false, // the user asked to stop (a close is then expected)
    interval: 1000 / 15, // ms between frames: the server's rate
    inFlight: false, // a frame is being encoded or awaits its result
    capturedAt: -Infinity, // when the last frame was captured (the rate cap)
    sentAt: 0, // when the frame in flight was sent
    timer: null,
    delivered: [], // arrival times of results (frames/s)
    history: [], // {t, scores: Map(index -> score)} of the chart
    seen: new Map(), // class index -> label, of the chart's legend
    canvas: document.createElement("canvas"),
  };

  async function startLive() {
    $("live-start").disabled = true;
    setStatus($("live-status"), "starting", "starting the camera…");
    try {
      live.stream = await navigator.mediaDevices.getUserMedia({ video: true, audio: false });
    } catch (error) {
      setStatus($("live-status"), "error", `camera unavailable: ${error.name}: ${error.message}`);
      $("live-start").disabled = false;
      return;
    }
    const video = $("live-video");
    video.srcObject = live.stream;
    try {
      await video.play();
    } catch (error) {
      // autoplay of a muted video is allowed; a refusal still leaves frames to draw
    }
    openSocket();
  }

  function openSocket() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const socket = new WebSocket(`${scheme}//${location.host}/api/stream`);
    socket.binaryType = "arraybuffer";
    socket.onmessage = (event) => onMessage(socket, event);
    socket.onclose = (event) => onClose(socket, event);
    live.socket = socket;
    live.stopping = false;
    setStatus($("live-status"), "connecting", "connecting…");
  }

  function onMessage(socket, event) {
    if (socket !== live.socket || typeof event.data !== "string") return;
    let message;
    try {
      message = JSON.parse(event.data);
    } catch (error) {
      setStatus($("live-status"), "error", "the server sent something that is not JSON");
      return;
    }
    if (message.type === "ready") {
      live.interval = 1000 / Math.max(0.1, Number(message.fps) || 15);
      live.running = true;
      $("live-stop").disabled = false;
      $("live-reset").disabled = false;
      setStatus($("live-status"), "live", `live, ${message.mode} model at ≤ ${message.fps} frames/s`);
      scheduleFrame();
    } else if (message.type === "result") {
      showResult(message);
      live.inFlight = false;
      scheduleFrame();
    } else if (message.type === "error") {
      // a frame the server could not read: say so and go on with the next one
      push(stats.errors, message.error);
      setStatus($("live-status"), "error", `frame refused: ${message.error}`);
      live.inFlight = false;
      scheduleFrame();
    } else if (message.type === "reset") {
      clearLive();
      setStatus($("live-status"), "live", "reset: the model starts from a fresh state");
    }
  }

  // the next frame: at most at the server's rate, and only once the previous one came back, so
  // that no queue (and no lag behind the camera) builds up
  function scheduleFrame() {
    if (!live.running || live.inFlight || live.timer !== null) return;
    const wait = Math.max(0, live.capturedAt + live.interval - performance.now());
    live.timer = setTimeout(() => {
      live.timer = null;
      sendFrame();
    }, wait);
  }

  // the frame's size: the shorter side about twice the model's resize size (or 256 px), never
  // enlarged, within the server's pixel limit
  function frameSize(width, height) {
    const target = model && model.scale_size ? 2 * model.scale_size : 256;
    let scale = Math.min(1, target / Math.min(width, height));
    const limit = model ? model.max_frame_pixels : Infinity;
    if (width * height * scale * scale > limit) scale = Math.sqrt(limit / (width * height));
    return [Math.max(1, Math.floor(width * scale)), Math.max(1, Math.floor(height * scale))];
  }

  function sendFrame() {
    const video = $("live-video");
    const socket = live.socket;
    if (!live.running || !socket || socket.readyState !== WebSocket.OPEN) return;
    if (video.readyState < 2 || !video.videoWidth) {
      live.timer = setTimeout(() => {
        live.timer = null;
        sendFrame();
      }, 50); // no picture yet
      return;
    }
    live.inFlight = true;
    const capturedAt = performance.now();
    live.capturedAt = capturedAt;
    const [width, height] = frameSize(video.videoWidth, video.videoHeight);
    const canvas = live.canvas;
    if (canvas.width !== width || canvas.height !== height) {
      canvas.width = width;
      canvas.height = height;
    }
    canvas.getContext("2d").drawImage(video, 0, 0, width, height);
    canvas.toBlob((blob) => deliver(socket, blob, capturedAt), "image/jpeg", 0.8);
  }

  async function deliver(socket, blob, capturedAt) {
    if (!blob || socket !== live.socket || socket.readyState !== WebSocket.OPEN) {
      live.inFlight = false;
      scheduleFrame();
      return;
    }
    const data = await blob.arrayBuffer();
    if (socket !== live.socket || socket.readyState !== WebSocket.OPEN) {
      live.inFlight = false; // closed while encoding (a send now would only log an error)
      return;
    }
    if (model && data.byteLength > model.max_frame_bytes) {
      setStatus($("live-status"), "error", "a frame is over the server's size limit: skipped");
      live.inFlight = false;
      scheduleFrame();
      return;
    }
    live.sentAt = performance.now();
    push(stats.encodeMs, live.sentAt - capturedAt);
    socket.send(data);
  }

  function showResult(result) {
    const label = $("live-label");
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = percent(result.score);
    label.replaceChildren(document.createTextNode(result.label), score);
    label.dataset.label = result.label;
    label.dataset.score = String(result.score);
    label.style.borderLeft = `0.6rem solid ${colour(result.index)}`;
    renderTopK($("live-topk"), result.top_k);
    $("live-latency").textContent = `${result.latency_ms.toFixed(1)} ms`;
    $("live-latency").dataset.latencyMs = String(result.latency_ms);
    stats.frames += 1;
    $("live-frames").textContent = String(stats.frames);
    $("live-frames").dataset.frames = String(stats.frames);
    addToChart(result.top_k);

    const now = performance.now();
    const rtt = now - live.sentAt; // send -> label in the page
    push(stats.rttMs, rtt);
    push(stats.sentAt, live.sentAt);
    push(stats.shownAt, now);
    push(stats.latencyMs, result.latency_ms);
    push(stats.serverMs, result.server_ms);
    const shown = median(stats.rttMs.slice(-SHOWN_RTT));
    $("live-rtt").textContent = `${shown.toFixed(1)} ms`;
    $("live-rtt").dataset.rttMs = rtt.toFixed(2);
    updateFps(now);
  }

  function updateFps(now) {
    live.delivered.push(now);
    while (live.delivered.length && live.delivered[0] < now - FPS_WINDOW_MS) live.delivered.shift();
    const count = live.delivered.length;
    const span = count > 1 ? live.delivered[count - 1] - live.delivered[0] : 0;
    stats.fps = span > 0 ? ((count - 1) * 1000) / span : 0;
    $("live-fps").textContent = stats.fps.toFixed(1);
    $("live-fps").dataset.fps = stats.fps.toFixed(2);
  }

  // -- the live chart: the top scores over the last 10 s ----------------------------------------
  function addToChart(topK) {
    const now = performance.now();
    const scores = new Map();
    let legendChanged = false;
    for (const entry of topK) {
      scores.set(entry.index, entry.score);
      if (!live.seen.has(entry.index)) {
        live.seen.set(entry.index, entry.label);
        legendChanged = true;
      }
    }
    live.history.push({ t: now, scores });
    while (live.history.length && live.history[0].t < now - CHART_SECONDS * 1000) {
      live.history.shift();
    }
    if (legendChanged) {
      const entries = [...live.seen].map(([index, label]) => ({ index, label }));
      renderLegend($("live-legend"), entries.sort((a, b) => a.index - b.index));
    }
    drawChart(now);
  }

  function drawChart(now) {
    const canvas = $("live-chart");
    const ratio = window.devicePixelRatio || 1;
    const width = Math.max(1, Math.round(canvas.clientWidth * ratio));
    const height = Math.max(1, Math.round(canvas.clientHeight * ratio));
    if (canvas.width !== width || canvas.height !== height) {
      canvas.width = width;
      canvas.height = height;
    }
    const context = canvas.getContext("2d");
    context.clearRect(0, 0, width, height);
    context.strokeStyle = "#d7dce2";
    context.lineWidth = ratio;
    context.fillStyle = "#5b6470";
    context.font = `${11 * ratio}px system-ui, sans-serif`;
    for (const level of [0.25, 0.5, 0.75]) {
      context.beginPath();
      context.moveTo(0, height * (1 - level));
      context.lineTo(width, height * (1 - level));
      context.stroke();
      context.fillText(`${level * 100}%`, 3 * ratio, height * (1 - level) - 3 * ratio);
    }
    context.fillText(`-${CHART_SECONDS} s`, 3 * ratio, height - 4 * ratio);
    context.textAlign = "right";
    context.fillText("now", width - 3 * ratio, height - 4 * ratio);
    context.textAlign = "left";
    const start = now - CHART_SECONDS * 1000;
    const x = (t) => ((t - start) / (CHART_SECONDS * 1000)) * width;
    const y = (score) => height - score * (height - 4 * ratio) - 2 * ratio;
    context.lineWidth = 2 * ratio;
    for (const index of live.seen.keys()) {
      context.strokeStyle = colour(index);
      context.beginPath();
      let drawing = false;
      for (const point of live.history) {
        const score = point.scores.get(index);
        if (score === undefined) {
          drawing = false; // not in this frame's top-k: a gap
          continue;
        }
        if (drawing) context.lineTo(x(point.t), y(score));
        else context.moveTo(x(point.t), y(score));
        drawing = true;
      }
      context.stroke();
    }
  }

  function clearLive() {
    live.history = [];
    live.seen.clear();
    $("live-legend").replaceChildren();
    const label = $("live-label");
    label.replaceChildren();
    label.dataset.label = "";
    label.dataset.score = "";
    $("live-topk").replaceChildren();
    drawChart(performance.now());
  }

  const CLOSE_REASONS = {
    1009: "a frame was too large for the server",
    1013: "the server is busy",
    1011: "the server met an error",
    1006: "the connection was lost (is the server still running?)",
  };

  function onClose(socket, event) {
    if (socket !== live.socket) return;
    const expected = live.stopping;
    stopCamera();
    stats.close = { code: event.code, reason: event.reason };
    const status = $("live-status");
    status.dataset.closeCode = String(event.code);
    if (expected) {
      setStatus(status, "idle", "camera off");
      return;
    }
    const what = CLOSE_REASONS[event.code] || `the connection closed (code ${event.code})`;
    setStatus(status, "error", event.reason ? `${what}: ${event.reason}` : what);
  }

  function stopCamera() {
    live.running = false;
    live.inFlight = false;
    if (live.timer !== null) clearTimeout(live.timer);
    live.timer = null;
    if (live.stream) for (const track of live.stream.getTracks()) track.stop();
    live.stream = null;
    $("live-video").srcObject = null;
    live.socket = null;
    $("live-start").disabled = !model;
    $("live-stop").disabled = true;
    $("live-reset").disabled = true;
  }

  function stopLive() {
    const socket = live.socket;
    live.stopping = true;
    if (socket && socket.readyState <= WebSocket.OPEN) {
      socket.close(1000, "stopped");
      live.running = false;
    } else {
      stopCamera();
      setStatus($("live-status"), "idle", "camera off");
    }
  }

  function resetLive() {
    if (live.socket && live.socket.readyState === WebSocket.OPEN) {
      live.socket.send(JSON.stringify({ type: "reset" }));
    }
  }

  // -- upload ----------------------------------------------------------------------------------
  const UPLOAD_ERRORS = {
    400: "The server could not read the upload",
    413: "The file is too large",
    422: "This file cannot be analysed",
    503: "The server is busy",
  };

  let analysing = null; // the timer of the "analysing… N s" indicator

  function upload(file) {
    const progress = $("upload-progress");
    const status = $("upload-status");
    const error = $("upload-error");
    error.hidden = true;
    error.textContent = "";
    delete error.dataset.status;
    $("upload-result").hidden = true;
    progress.hidden = false;
    progress.value = 0;
    const megabytes = (file.size / 2 ** 20).toFixed(1);
    setStatus(status, "uploading", `uploading ${file.name} (${megabytes} MB)…`);
    stopAnalysing();
    stats.upload = { phases: ["uploading"], progress: [] };

    const form = new FormData();
    form.append("video", file, file.name);
    const request = new XMLHttpRequest();
    request.open("POST", "/api/predict");
    request.upload.onprogress = (event) => {
      if (!event.lengthComputable) return;
      progress.value = (100 * event.loaded) / event.total;
      stats.upload.progress.push(progress.value);
    };
    request.upload.onload = () => startAnalysing();
    request.onload = () => finishUpload(request);
    request.onerror = () => {
      const limit = model ? ` (the server takes up to ${model.max_upload_mb} MB)` : "";
      failUpload(0, `The upload failed: the connection closed${limit}`);
    };
    request.send(form);
  }

  function startAnalysing() {
    const progress = $("upload-progress");
    progress.removeAttribute("value"); // an indeterminate bar while the server works
    const started = performance.now();
    uploadPhase("analysing");
    const tick = () => {
      const seconds = (performance.now() - started) / 1000;
      setStatus($("upload-status"), "analysing", `analysing… ${seconds.toFixed(1)} s`);
    };
    tick();
    analysing = setInterval(tick, 100);
  }

  function stopAnalysing() {
    if (analysing !== null) clearInterval(analysing);
    analysing = null;
  }

  function finishUpload(request) {
    stopAnalysing();
    $("upload-progress").hidden = true;
    let answer = null;
    try {
      answer = JSON.parse(request.responseText);
    } catch (error) {
      answer = null;
    }
    if (request.status !== 200 || !answer || answer.error) {
      const what = UPLOAD_ERRORS[request.status] || `The server answered ${request.status}`;
      const detail = answer && answer.error ? answer.error : request.statusText;
      failUpload(request.status, `${what}: ${detail}`);
      return;
    }
    uploadPhase("done");
    setStatus(
      $("upload-status"),
      "done",
      `analysed ${answer.duration.toFixed(1)} s of video in ${answer.seconds.toFixed(1)} s`,
    );
    renderUpload(answer);
  }

  function failUpload(code, message) {
    uploadPhase("error");
    stopAnalysing();
    $("upload-progress").hidden = true;
    setStatus($("upload-status"), "error", "");
    const error = $("upload-error");
    error.hidden = false;
    error.dataset.status = String(code);
    error.textContent = message;
  }

  function renderUpload(answer) {
    $("upload-result").hidden = false;
    renderTopK($("upload-topk"), answer.top_k);
    const segments = answer.timeline || [];
    const end = segments.reduce((last, s) => Math.max(last, s.end), 0);
    const duration = Math.max(answer.duration || 0, end) || 1;
    const timeline = $("timeline");
    const bands = segments.map((segment) => band(segment, duration));
    timeline.replaceChildren(...bands);
    timeline.dataset.timelineSegments = String(segments.length);
    timeline.dataset.labels = segments.map((s) => s.label).join(",");
    $("timeline-end").textContent = `${duration.toFixed(1)} s`;
    $("timeline-hover").textContent = "hover a band for its label";
    const labels = new Map(segments.map((s) => [s.index, s.label]));
    const entries = [...labels].map(([index, label]) => ({ index, label }));
    renderLegend($("timeline-legend"), entries.sort((a, b) => a.index - b.index));
  }

  function band(segment, duration) {
    const element = document.createElement("div");
    element.className = "band";
    element.style.left = `${(100 * segment.start) / duration}%`;
    element.style.width = `${(100 * (segment.end - segment.start)) / duration}%`;
    element.style.background = colour(segment.index);
    element.textContent = segment.label;
    element.dataset.label = segment.label;
    element.dataset.score = String(segment.score);
    element.dataset.start = String(segment.start);
    element.dataset.end = String(segment.end);
    const describe = () => {
      const span = `${segment.start.toFixed(1)}–${segment.end.toFixed(1)} s`;
      $("timeline-hover").textContent = `${segment.label}  ${percent(segment.score)}  ${span}`;
      $("timeline-hover").dataset.label = segment.label;
    };
    element.addEventListener("mouseenter", describe);
    element.addEventListener("focus", describe);
    element.tabIndex = 0;
    return element;
  }

  function setUpUpload() {
    const input = $("upload-input");
    const drop = $("upload-drop");
    input.addEventListener("change", () => {
      if (input.files && input.files.length) upload(input.files[0]);
      input.value = ""; // the same file can be chosen again
    });
    drop.addEventListener("dragover", (event) => {
      event.preventDefault();
      drop.classList.add("over");
    });
    drop.addEventListener("dragleave", () => drop.classList.remove("over"));
    drop.addEventListener("drop", (event) => {
      event.preventDefault();
      drop.classList.remove("over");
      const files = event.dataTransfer && event.dataTransfer.files;
      if (files && files.length) upload(files[0]);
    });
  }

  // -- start -----------------------------------------------------------------------------------
  document.addEventListener("DOMContentLoaded", () => {
    $("live-start").addEventListener("click", startLive);
    $("live-stop").addEventListener("click", stopLive);
    $("live-reset").addEventListener("click", resetLive);
    setUpUpload();
    window.addEventListener("pagehide", () => {
      if (live.socket) stopLive();
    });
    loadModel();
  });
})();
