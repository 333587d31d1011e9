// The console's changes: forms and buttons marked data-api call the /v1 API with the session
// cookie and the session's CSRF token (x-csrf-token), then reload the page or show what the API
// answered. Everything is written with textContent: nothing the API returns is parsed as HTML.
"use strict";

(function () {
  const meta = document.querySelector('meta[name="csrf-token"]');
  const csrf = meta ? meta.content : "";

  // Calls the API; resolves to the parsed JSON (or null), rejects with a readable message.
  async function call(method, url, body) {
    const headers = { "x-csrf-token": csrf, accept: "application/json" };
    const init = { method, headers, credentials: "same-origin" };
    if (body !== undefined && method !== "GET") {
      headers["content-type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const response = await fetch(url, init);
    const text = await response.text();
    let json = null;
    try { json = text ? JSON.parse(text) : null; } catch (_) { json = null; }
    if (!response.ok) {
      const detail = json && (json.detail || json.title);
      throw new Error(detail || `The request failed (HTTP ${response.status}).`);
    }
    return json;
  }
  window.sonoraApi = call;

  function flash(message, bad) {
    const box = document.getElementById("flash");
    if (!box) return;
    box.textContent = message;
    box.classList.toggle("bad", !!bad);
    box.hidden = false;
    box.scrollIntoView({ block: "nearest" });
  }
  window.sonoraFlash = flash;

  // Remembers a message across the reload that follows a change.
  function reloadWith(message) {
    if (message) sessionStorage.setItem("sonora-flash", message);
    location.reload();
  }
  const pending = sessionStorage.getItem("sonora-flash");
  if (pending) {
    sessionStorage.removeItem("sonora-flash");
    flash(pending, false);
  }

  // A form's fields as the API's JSON: data-kind says how to read one (list, int, multi).
  function formBody(form) {
    const body = {};
    for (const field of form.elements) {
      if (!field.name || field.disabled) continue;
      const kind = field.dataset.kind || "";
      if (kind === "multi") {
        if (!body[field.name]) body[field.name] = [];
        if (field.checked) body[field.name].push(field.value);
        continue;
      }
      const value = field.value.trim();
      if (kind === "list") {
        const items = value.split(/[,\n]/).map((s) => s.trim()).filter(Boolean);
        if (items.length || form.dataset.method === "PATCH") body[field.name] = items.length ? items : ["*"];
      } else if (kind === "int") {
        if (value !== "") body[field.name] = Number.parseInt(value, 10);
      } else if (value !== "" || form.dataset.method === "PATCH") {
        body[field.name] = value;
      }
    }
    return body;
  }

  // Shows one field of the answer (a key or a secret shown once) in the element named.
  function show(element, answer) {
    const into = document.getElementById(element.dataset.into);
    if (!into || !answer) return false;
    into.textContent = "";
    const value = document.createElement("code");
    value.textContent = answer[element.dataset.show] || "";
    const copy = document.createElement("button");
    copy.type = "button";
    copy.textContent = "Copy";
    copy.addEventListener("click", () => navigator.clipboard && navigator.clipboard.writeText(value.textContent));
    into.append(value, " ", copy);
    return true;
  }

  async function run(element, method, url, body) {
    element.setAttribute("aria-busy", "true");
    const buttons = element.tagName === "FORM" ? element.querySelectorAll("button") : [element];
    buttons.forEach((b) => { b.disabled = true; });
    try {
      const answer = await call(method, url, body);
      if (element.dataset.show) {
        show(element, answer);
        flash(element.dataset.done || "Done.", false);
      } else if (element.dataset.go && answer && answer.id) {
        location.assign(element.dataset.go.replace("{id}", encodeURIComponent(answer.id)));
      } else {
        reloadWith(element.dataset.done || "Saved.");
      }
    } catch (error) {
      flash(error.message, true);
    } finally {
      element.removeAttribute("aria-busy");
      buttons.forEach((b) => { b.disabled = false; });
    }
  }

  document.addEventListener("submit", (event) => {
    const form = event.target;
    if (!(form instanceof HTMLFormElement) || !form.dataset.api) return;
    event.preventDefault();
    run(form, form.dataset.method || "POST", form.dataset.api, formBody(form));
  });

  document.addEventListener("click", async (event) => {
    const button = event.target.closest("button");
    if (!button) return;
    if (button.dataset.api && !button.form) {
      const body = button.dataset.body ? JSON.parse(button.dataset.body) : undefined;
      run(button, button.dataset.method || "POST", button.dataset.api, body);
    } else if (button.dataset.play) {
      // An audio job's file: fetched with the session, played from a blob URL.
      const player = document.getElementById("job-audio");
      try {
        const response = await fetch(button.dataset.play, { headers: { "x-csrf-token": csrf } });
        if (!response.ok) throw new Error(`The audio could not be read (HTTP ${response.status}).`);
        player.src = URL.createObjectURL(await response.blob());
        player.hidden = false;
        await player.play();
      } catch (error) {
        flash(error.message, true);
      }
    }
  });
})();
