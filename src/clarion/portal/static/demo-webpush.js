// The web push demo page (/portal/demo/webpush): registers demo-webpush-sw.js, subscribes
// this browser with the service's VAPID key, stores the subscription as a webpush binding
// through the portal, and lists what the service worker reports it received.
"use strict";

(() => {
  const root = document.getElementById("webpush-demo");
  if (!root) return;
  const $ = (id) => document.getElementById(id);
  const settings = root.dataset;
  const swStatus = $("sw-status");
  const button = $("subscribe-button");
  let registration = null;

  function setWorker(state, text) {
    swStatus.dataset.state = state;
    swStatus.textContent = text;
  }

  function showPermission() {
    $("permission-status").textContent =
      "Notification" in window ? Notification.permission : "not supported by this browser";
  }

  function fail(text) {
    $("subscribe-error-text").textContent = text;
    $("subscribe-error").hidden = false;
    $("subscribe-result").hidden = true;
  }

  function succeed(text) {
    $("subscribe-error").hidden = true;
    const result = $("subscribe-result");
    result.textContent = text;
    result.hidden = false;
  }

  // A VAPID public key travels base64url-encoded; subscribe() wants its bytes.
  function keyBytes(value) {
    const padded = value.replace(/-/g, "+").replace(/_/g, "/") + "=".repeat((4 - (value.length % 4)) % 4);
    return Uint8Array.from(atob(padded), (c) => c.charCodeAt(0));
  }

  function sameKey(buffer, bytes) {
    if (!buffer) return false;
    const have = new Uint8Array(buffer);
    return have.length === bytes.length && have.every((b, i) => b === bytes[i]);
  }

  function addNotification(message) {
    const item = document.createElement("li");
    item.className = "incoming-notification";
    const title = document.createElement("strong");
    title.className = "incoming-title";
    title.textContent = message.title;
    const body = document.createElement("div");
    body.className = "incoming-body";
    body.textContent = message.body;
    const when = document.createElement("time");
    when.className = "muted small";
    when.dateTime = message.receivedAt;
    when.textContent = new Date(message.receivedAt).toLocaleTimeString();
    item.append(title, " ", when, body);
    if (message.data !== null && message.data !== undefined) {
      const data = document.createElement("code");
      data.className = "incoming-data small";
      data.textContent = JSON.stringify(message.data);
      item.append(data);
    }
    const shown = document.createElement("div");
    shown.className = "incoming-shown hint";
    shown.dataset.id = message.id;
    shown.textContent = "showing the notification…";
    item.append(shown);
    $("incoming").prepend(item);
    $("incoming-empty").hidden = true;
  }

  function noteShown(message) {
    const shown = document.querySelector(`.incoming-shown[data-id="${CSS.escape(message.id)}"]`);
    if (shown) {
      shown.textContent = message.ok
        ? "shown as a system notification"
        : `not shown as a system notification: ${message.error}`;
    }
  }

  function onMessage(event) {
    const message = event.data || {};
    if (message.type === "push") addNotification(message);
    else if (message.type === "shown") noteShown(message);
    else if (message.type === "click") succeed(`Notification "${message.title}" was clicked.`);
  }

  async function startWorker() {
    if (!("serviceWorker" in navigator)) {
      setWorker("failed", "not supported by this browser (or the page is not on https/localhost)");
      return;
    }
    navigator.serviceWorker.addEventListener("message", onMessage);
    navigator.serviceWorker.startMessages();
    try {
      await navigator.serviceWorker.register(settings.workerUrl, { scope: settings.workerScope });
      registration = await navigator.serviceWorker.ready;
      setWorker("active", `active (scope ${registration.scope})`);
      button.disabled = !settings.vapidKey || !settings.serviceSid;
    } catch (error) {
      setWorker("failed", `failed to register: ${error.name}: ${error.message}`);
    }
  }

  async function pushSubscription() {
    if (!("PushManager" in window)) throw new Error("this browser has no Push API");
    if (!("Notification" in window)) throw new Error("this browser has no notifications");
    const permission = await Notification.requestPermission();
    showPermission();
    if (permission !== "granted") {
      throw new Error(`notifications are ${permission} for this site; allow them in the browser's site settings`);
    }
    const key = keyBytes(settings.vapidKey);
    const existing = await registration.pushManager.getSubscription();
    if (existing && sameKey(existing.options.applicationServerKey, key)) return existing;
    // A subscription made with another service's key would refuse this one's pushes.
    if (existing) await existing.unsubscribe();
    return registration.pushManager.subscribe({ userVisibleOnly: true, applicationServerKey: key });
  }

  async function register(subscription, identity) {
    const body = new URLSearchParams({
      ServiceSid: settings.serviceSid,
      Identity: identity,
      Address: JSON.stringify(subscription.toJSON()),
    });
    const response = await fetch(settings.subscribeUrl, {
      method: "POST",
      headers: { "X-CSRF-Token": settings.csrf },
      body,
      credentials: "same-origin",
    });
    const json = (response.headers.get("content-type") || "").startsWith("application/json");
    if (!json) throw new Error("your portal session ended: reload the page and sign in again");
    const answer = await response.json();
    if (!response.ok) throw new Error(answer.message);
    return answer;
  }

  async function onSubmit(event) {
    event.preventDefault();
    const identity = $("f-Identity").value.trim();
    if (!identity) {
      fail("Give the identity this browser belongs to.");
      return;
    }
    button.disabled = true;
    try {
      let subscription;
      try {
        subscription = await pushSubscription();
      } catch (error) {
        fail(`The browser refused: ${error.name}: ${error.message}`);
        return;
      }
      try {
        const binding = await register(subscription, identity);
        succeed(`Subscribed: binding ${binding.sid} of ${binding.identity} now receives this service's web pushes.`);
      } catch (error) {
        fail(`Clarion did not store the subscription: ${error.message}`);
      }
    } finally {
      button.disabled = false;
    }
  }

  showPermission();
  $("subscribe-form").addEventListener("submit", onSubmit);
  startWorker();
})();
