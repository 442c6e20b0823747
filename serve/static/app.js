// lesionlite web page: pick or drop an image, POST it to /predict, draw the top classes as bars.
// No external requests: everything comes from this server.
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const fileInput = $("file"), drop = $("drop"), status = $("status"), modelSel = $("model");
  let previewUrl = null;
  const modelInfo = {};  // name -> /v2/models metadata (readable class names, accuracy, parity)

  function headers() {
    const key = $("apikey").value.trim();
    return key ? { "X-API-Key": key } : {};
  }

  function setStatus(text, isError) {
    status.textContent = text;
    status.className = isError ? "error" : "";
  }

  async function loadModels() {
    try {
      const r = await fetch("/v2/models", { headers: headers() });
      if (r.status === 401) { $("auth").open = true; setStatus("This server needs an API key.", true); return; }
      if (!r.ok) return;
      const data = await r.json();
      modelSel.innerHTML = "";
      for (const m of data.models) {
        modelInfo[m.name] = m;
        const o = document.createElement("option");
        o.value = m.name;
        const bal = m.metrics && typeof m.metrics.balanced_accuracy === "number"
          ? ", test balanced accuracy " + pct(m.metrics.balanced_accuracy) : "";
        const synthetic = m.synthetic_training_data ? ", SYNTHETIC training data" : "";
        const unverified = m.parity && m.parity.accepted === false ? ", NOT VERIFIED" : "";
        o.textContent = m.name + " (" + m.kind + (m.precision ? ", " + m.precision : "") + bal + synthetic + unverified + ")";
        if (m.name === data.default) o.selected = true;
        modelSel.appendChild(o);
      }
      const bad = $("unavailable");
      bad.innerHTML = "";
      for (const b of data.unavailable || []) {
        const li = document.createElement("li");
        li.textContent = b.name + ": " + b.reason;
        bad.appendChild(li);
      }
      $("unavailable-box").hidden = !(data.unavailable && data.unavailable.length);
      showSynthetic(modelInfo[modelSel.value || data.default]);
    } catch (e) { /* the page still works with the default model */ }
  }

  function pct(p) { return (100 * p).toFixed(1) + "%"; }

  function showSynthetic(info) {
    $("synthetic").hidden = !(info && info.synthetic_training_data);
  }

  function metricValue(v) {  // a number, or export's {value, ci_low, ci_high}
    return v && typeof v === "object" ? v.value : v;
  }

  function renderAbstain(res) {
    // Say why in words: out of distribution is a different thing from "not confident".
    const box = $("abstain");
    const list = $("abstain-reasons");
    list.innerHTML = "";
    if (!res.abstain) { box.hidden = true; return; }
    $("abstain-head").textContent = res.out_of_distribution
      ? "This image does not look like the images the model was checked on: the classes below are not meaningful for it."
      : "The model is not confident about this image: treat the result as inconclusive.";
    for (const reason of res.abstain_reasons || []) {
      const li = document.createElement("li");
      li.textContent = reason;
      list.appendChild(li);
    }
    box.hidden = false;
  }

  function renderReferral(res) {
    const el = $("referral");
    const r = res.referral;
    if (!r) { el.hidden = true; return; }
    const what = r.positive_classes.join(" + ") + (r.given_classes ? " | " + r.given_classes.join(" or ") : "");
    el.textContent = (r.refer ? "Operating point: REFER — " : "Operating point: below the referral threshold — ") +
      "P(" + what + ") " + pct(r.score) + " vs threshold " + pct(r.threshold) +
      " (chosen on validation images for " + (r.sensitivity_target != null ? pct(r.sensitivity_target) : "a target") +
      " sensitivity; another clinic's images reach less)." + (res.out_of_distribution ? " Not meaningful for an out-of-distribution image." : "");
    el.className = "referral" + (r.refer ? " refer" : "");
    el.hidden = false;
  }

  function render(res) {
    const bars = $("bars");
    bars.innerHTML = "";
    for (const t of res.top_k) {
      const li = document.createElement("li");
      li.className = "bar-row";
      const lab = document.createElement("div");
      lab.className = "bar-label";
      const info = modelInfo[res.model];
      const readable = info && info.class_labels && info.class_labels[t.label];
      const name = document.createElement("span"); name.className = "label"; name.textContent = readable || t.label;
      const val = document.createElement("span"); val.className = "value"; val.textContent = pct(t.probability);
      lab.append(name, val);
      const bar = document.createElement("div"); bar.className = "bar";
      const fill = document.createElement("span"); fill.style.width = pct(t.probability);
      bar.appendChild(fill);
      li.append(lab, bar);
      bars.appendChild(li);
    }
    $("uncertainty").textContent = "Uncertainty: " + pct(res.uncertainty) + " (normalised entropy; 0% = certain, 100% = no idea)";
    renderAbstain(res);
    renderReferral(res);
    const info = modelInfo[res.model] || {};
    $("synthetic").hidden = !res.synthetic_training_data;
    const bal = (info.metrics && typeof info.metrics.balanced_accuracy === "number"
      ? " · test balanced accuracy " + pct(info.metrics.balanced_accuracy) : "") +
      (res.synthetic_training_data ? " (SYNTHETIC data)" : "");
    const extAuc = info.metrics && metricValue(info.metrics.external_melanoma_auc);
    const intAuc = info.metrics && metricValue(info.metrics.internal_melanoma_auc);
    const auc = typeof intAuc === "number"
      ? " · melanoma AUC " + intAuc.toFixed(2) + " internal" +
        (typeof extAuc === "number" ? ", " + extAuc.toFixed(2) + " on another clinic's images" : "") : "";
    const parity = info.parity && info.parity.verified && typeof info.parity.top1_agreement === "number"
      ? " · agrees with PyTorch on " + pct(info.parity.top1_agreement) + " of test images"
      : (info.parity && info.parity.accepted === false ? " · NOT VERIFIED against PyTorch" : "");
    $("meta").textContent = "model " + res.model + " · version " + res.version + bal + auc + parity + " · " +
      res.latency_ms.toFixed(1) + " ms";
    $("result").hidden = false;
  }

  async function classify(file) {
    if (!file) return;
    if (previewUrl) URL.revokeObjectURL(previewUrl);
    previewUrl = URL.createObjectURL(file);
    $("preview").src = previewUrl;
    setStatus("Classifying…", false);
    const form = new FormData();
    form.append("file", file, file.name || "image");
    const q = new URLSearchParams({ top_k: "5" });
    if (modelSel.value) q.set("model", modelSel.value);
    try {
      const r = await fetch("/predict?" + q.toString(), { method: "POST", body: form, headers: headers() });
      const body = await r.json().catch(() => ({ error: "bad_response", detail: "the server sent no JSON" }));
      if (!r.ok) {
        $("result").hidden = true;
        if (r.status === 401) $("auth").open = true;
        setStatus("Error " + r.status + ": " + (body.detail || body.error || "request failed"), true);
        return;
      }
      setStatus("Done.", false);
      render(body);
    } catch (e) {
      setStatus("Could not reach the server: " + e, true);
    }
  }

  modelSel.addEventListener("change", () => showSynthetic(modelInfo[modelSel.value]));
  fileInput.addEventListener("change", () => classify(fileInput.files[0]));
  for (const ev of ["dragenter", "dragover"]) drop.addEventListener(ev, (e) => { e.preventDefault(); drop.classList.add("over"); });
  for (const ev of ["dragleave", "drop"]) drop.addEventListener(ev, (e) => { e.preventDefault(); drop.classList.remove("over"); });
  drop.addEventListener("drop", (e) => { const f = e.dataTransfer.files[0]; if (f) classify(f); });
  $("apikey").addEventListener("change", loadModels);
  loadModels();
})();
