// The dashboard's only script: no build step, no framework, allowed by the CSP as 'self'.
"use strict";

// Destructive buttons ask first: <form data-confirm="Delete this attachment?">.
document.addEventListener("submit", (event) => {
  const message = event.target.dataset && event.target.dataset.confirm;
  if (message && !window.confirm(message)) {
    event.preventDefault();
  }
});

// Live pages: while the "auto-refresh" box is ticked, re-fetch this page every few seconds
// and swap in its #live part (filters and forms outside it stay as the operator left them).
(function () {
  const box = document.getElementById("autorefresh");
  if (!box) return;
  const key = "stowage.autorefresh:" + location.pathname;
  const every = Number(box.dataset.every || "3") * 1000;
  let timer = null;

  async function refresh() {
    try {
      const response = await fetch(location.href, {credentials: "same-origin"});
      if (response.redirected || !response.ok) {  // logged out, or the server is down
        box.checked = false;
        stop();
        return;
      }
      const doc = new DOMParser().parseFromString(await response.text(), "text/html");
      const fresh = doc.getElementById("live");
      const live = document.getElementById("live");
      if (fresh && live) live.innerHTML = fresh.innerHTML;
    } catch (e) {
      // a network blip: try again next tick
    }
  }
  function start() { if (!timer) timer = setInterval(refresh, every); }
  function stop() { clearInterval(timer); timer = null; }

  box.checked = sessionStorage.getItem(key) === "1";
  if (box.checked) start();
  box.addEventListener("change", () => {
    sessionStorage.setItem(key, box.checked ? "1" : "0");
    if (box.checked) { refresh(); start(); } else { stop(); }
  });
})();
