// cifleet UI: parts of a page that refresh themselves, forms posted in place, copy buttons.
// Plain JavaScript, no build step. Markup hooks:
//   <div data-refresh-url="/x/fragment" data-refresh-ms="2000">  replaced by the fragment
//   <form method="post" data-inline>   posted with fetch(); the JSON {message} or {error}
//                                      is shown in #messages, the enclosing region refreshed
//   <form data-confirm="Really?">      asks before submitting
//   <button data-copy="element-id">    copies that element's value or text
(function () {
  "use strict";
  const FETCH_HEADERS = { "X-Requested-With": "fetch" };

  // A page being left (a form's navigation, such as Log out, or a link) must not reload
  // itself when a refresh then finds the session ended: two navigations would race, and
  // the one the browser drops may be the one that showed "You are logged out.".
  let leaving = false;
  window.addEventListener("beforeunload", () => {
    leaving = true;
    setTimeout(() => { leaving = false; }, 5000); // a download, not a navigation: stay alert
  });
  window.addEventListener("pageshow", () => { leaving = false; }); // back from the cache

  function sessionEnded() {
    if (!leaving) location.reload(); // to the login page, and back here after it
  }

  function csrfToken() {
    return document.querySelector('meta[name="csrf-token"]').content;
  }

  function say(text, isError) {
    const box = document.getElementById("messages");
    if (!box || !text) return;
    const p = document.createElement("p");
    p.className = isError ? "flash flash-error" : "flash";
    p.textContent = text;
    box.replaceChildren(p);
  }

  // Someone typing, with an editor open, about to click or tapping in the region: do not
  // replace it under them (a tap's target would be gone before its click).
  let lastPointerDown = { region: null, at: 0 };
  document.addEventListener("pointerdown", (event) => {
    const region = event.target.closest?.("[data-refresh-url]");
    if (region) lastPointerDown = { region, at: Date.now() };
  }, true);

  function busy(region) {
    if (region.querySelector("details[open]")) return true;
    if (lastPointerDown.region === region && Date.now() - lastPointerDown.at < 3000) return true;
    if (region.querySelector("button:hover, a:hover, summary:hover")) return true;
    return typing(region);
  }

  function typing(region) {
    const active = document.activeElement;
    return !!active && region.contains(active) && /^(INPUT|TEXTAREA|SELECT)$/.test(active.tagName);
  }

  // `afterAction`: the refresh that shows what the user's own action changed, which no
  // hover or recent tap holds back.
  async function refresh(region, afterAction = false) {
    const response = await fetch(region.dataset.refreshUrl, {
      headers: FETCH_HEADERS, credentials: "same-origin", cache: "no-store",
    });
    if (response.status === 401) { sessionEnded(); return; }
    if (response.status >= 500) throw new Error(`HTTP ${response.status}`); // not answering
    if (!response.ok) return;
    const html = await response.text();
    if (afterAction ? typing(region) : busy(region)) return;
    const focusedId = region.contains(document.activeElement) ? document.activeElement.id : "";
    region.innerHTML = html;
    if (focusedId) document.getElementById(focusedId)?.focus(); // keyboard users keep their place
    region.dispatchEvent(new CustomEvent("cifleet:refreshed", { bubbles: true }));
  }

  function startRefresh(region) {
    const interval = Number(region.dataset.refreshMs) || 2000;
    const tick = async () => {
      if (!document.hidden) {
        try {
          await refresh(region);
          document.body.classList.remove("stale");
        } catch (e) {
          document.body.classList.add("stale"); // the banner: what is shown may be old
        }
      }
      setTimeout(tick, interval);
    };
    setTimeout(tick, interval);
  }

  async function postInline(form) {
    const response = await fetch(form.action, {
      method: "POST", body: new FormData(form), headers: FETCH_HEADERS, credentials: "same-origin",
    });
    if (response.status === 401) { sessionEnded(); return; }
    let body = {};
    try { body = await response.json(); } catch (e) { /* not JSON: use the status below */ }
    say(response.ok ? body.message : body.error || `failed: HTTP ${response.status}`, !response.ok);
    if (!response.ok) return;
    if (form.contains(document.activeElement)) document.activeElement.blur();
    const details = form.closest("details");
    if (details) details.open = false;
    const region = form.closest("[data-refresh-url]");
    if (region) await refresh(region, true);
  }

  document.addEventListener("submit", (event) => {
    const form = event.target;
    if (form.dataset.confirm && !window.confirm(form.dataset.confirm)) {
      event.preventDefault();
      return;
    }
    if (form.hasAttribute("data-inline")) {
      event.preventDefault();
      postInline(form).catch(() => say("the primary did not answer; try again", true));
    }
  });

  document.addEventListener("click", async (event) => {
    const button = event.target.closest("[data-copy]");
    if (!button) return;
    const source = document.getElementById(button.dataset.copy);
    const text = "value" in source ? source.value : source.textContent;
    try {
      await navigator.clipboard.writeText(text);
    } catch (e) {
      if (source.select) { source.select(); document.execCommand("copy"); }
    }
    const label = button.dataset.label || (button.dataset.label = button.textContent);
    button.textContent = "Copied";
    setTimeout(() => { button.textContent = label; }, 1500);
  });

  // A message of success goes after a while (an error stays until the next action).
  function fadeLater(flash) {
    if (!flash.classList.contains("flash-error")) setTimeout(() => flash.remove(), 8000);
  }
  document.querySelectorAll("#messages .flash").forEach(fadeLater);
  new MutationObserver((changes) => {
    for (const change of changes) change.addedNodes.forEach((n) => n.classList && fadeLater(n));
  }).observe(document.getElementById("messages") || document.createElement("div"), { childList: true });

  // Times: the page says "3 min ago"; hovering shows the reader's local time and UTC.
  function localTimes(root) {
    root.querySelectorAll("time[datetime]").forEach((el) => {
      const at = new Date(el.getAttribute("datetime"));
      if (isNaN(at)) return;
      el.title = `${at.toLocaleString()} (${at.toISOString().replace("T", " ").slice(0, 19)} UTC)`;
    });
  }
  localTimes(document);
  document.addEventListener("cifleet:refreshed", (event) => localTimes(event.target));

  document.querySelectorAll("[data-refresh-url]").forEach(startRefresh);
  window.cifleet = { csrfToken, refresh, say, sessionEnded, fetchHeaders: FETCH_HEADERS };
})();
