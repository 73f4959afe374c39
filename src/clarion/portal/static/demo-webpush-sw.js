// The web push demo's service worker (served at /portal/demo/webpush/sw.js, scope the page).
// It reads the JSON Clarion's webpush channel sends — {"title", "body", "data", "twi_receipt"}
// (clarion/delivery/payloads.py) — shows it as a notification and tells every open page.
"use strict";

// A new version takes over at once: the demo has no cached state an old page depends on.
self.addEventListener("install", () => self.skipWaiting());
self.addEventListener("activate", (event) => event.waitUntil(self.clients.claim()));

async function tellPages(message) {
  const pages = await self.clients.matchAll({ type: "window", includeUncontrolled: true });
  for (const page of pages) page.postMessage(message);
}

// What a push carries, whatever sent it: Clarion's JSON, other JSON, text, or nothing.
function readPayload(data) {
  if (!data) return { title: "Notification", body: "" };
  let payload;
  try {
    payload = data.json();
  } catch {
    return { title: "Notification", body: data.text() };
  }
  if (payload === null || typeof payload !== "object" || Array.isArray(payload)) {
    return { title: "Notification", body: JSON.stringify(payload) };
  }
  return {
    title: typeof payload.title === "string" && payload.title ? payload.title : "Notification",
    body: typeof payload.body === "string" ? payload.body : "",
    data: payload.data === undefined ? null : payload.data,
    receipt: typeof payload.twi_receipt === "string" ? payload.twi_receipt : null,
  };
}

self.addEventListener("push", (event) => {
  const { title, body, data = null, receipt = null } = readPayload(event.data);
  const id = `${Date.now()}-${Math.random().toString(36).slice(2)}`;
  const message = { type: "push", id, title, body, data, receivedAt: new Date().toISOString() };
  event.waitUntil(
    (async () => {
      // The pages hear of it first: a notification the system refuses is still a push received.
      await tellPages(message);
      try {
        await self.registration.showNotification(title, { body, data: { data, receipt }, tag: id });
        await tellPages({ type: "shown", id, ok: true });
      } catch (error) {
        await tellPages({ type: "shown", id, ok: false, error: `${error.name}: ${error.message}` });
      }
    })(),
  );
});

// The app's own link when the push carries a same-origin `data.url`, else the demo page:
// focus a tab already showing it, or open one.
self.addEventListener("notificationclick", (event) => {
  event.notification.close();
  const scope = new URL(self.registration.scope);
  let target = scope;
  const link = event.notification.data && event.notification.data.data && event.notification.data.data.url;
  if (typeof link === "string") {
    try {
      const url = new URL(link, scope);
      if (url.origin === scope.origin) target = url;
    } catch {
      // Not a URL: the demo page it is.
    }
  }
  event.waitUntil(
    (async () => {
      await tellPages({ type: "click", title: event.notification.title });
      const pages = await self.clients.matchAll({ type: "window", includeUncontrolled: true });
      const open = pages.find((page) => new URL(page.url).pathname === target.pathname);
      if (open) await open.focus();
      else await self.clients.openWindow(target.href);
    })(),
  );
});
