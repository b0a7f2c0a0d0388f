// The /view page: reads what to watch from the URL fragment (which browsers never send to the
// server, so the token stays out of access logs), then shows the channel as a terminal or a
// desktop.
//
//   /view#token=ogs_...&ws=W&agent=A&port=7681&channel=C
//
// ws, port, agent and channel default to the token's own claims; port 6080 is a desktop, any
// other a terminal. `window.tetherView` exposes the state read-only, for scripts and tests.

import "@xterm/xterm/css/xterm.css";
import "./view.css";
import { KIND } from "./wire.js";
import { Link } from "./link.js";
import { startTerminal } from "./terminal.js";
import { startDesktop } from "./desktop.js";

const DESKTOP_PORT = 6080;

/** The token's claims (not verified here: the relay does that). */
function claims(token) {
  try {
    const body = token.slice(token.indexOf("_") + 1, token.lastIndexOf("."));
    const json = atob(body.replace(/-/g, "+").replace(/_/g, "/"));
    return JSON.parse(new TextDecoder().decode(Uint8Array.from(json, (c) => c.charCodeAt(0))));
  } catch {
    return {};
  }
}

function main() {
  const params = new URLSearchParams(location.hash.slice(1));
  const status = document.getElementById("status");
  const setStatus = (state, detail) => {
    status.dataset.state = state;
    status.textContent = detail ? `${state}: ${detail}` : state;
    view.state = state;
    view.detail = detail;
    if (state === "reconnecting") view.reconnects += 1;
  };
  const view = { state: "starting", detail: "", reconnects: 0, viewOnly: false, inspect: () => ({}) };
  window.tetherView = view;

  const token = params.get("token") || "";
  const c = claims(token);
  const port = Number(params.get("port") || c.port || 0);
  const channel = {
    ws: params.get("ws") || c.workspaceId || "",
    agent: params.get("agent") || c.agentId || "",
    channel: params.get("channel") || c.channelId || "",
    port,
    kind: port === DESKTOP_PORT ? KIND.DESKTOP : KIND.PTY,
  };
  const missing = ["token", "ws", "agent", "channel"].filter((k) => !(k === "token" ? token : channel[k]));
  if (missing.length || !port) {
    setStatus("closed", `the URL fragment needs ${[...missing, ...(port ? [] : ["port"])].join(", ")} (#token=...&channel=...)`);
    return;
  }
  document.title = `${channel.kind === KIND.DESKTOP ? "desktop" : "terminal"} ${channel.channel} · Tether`;
  document.getElementById("title").textContent = `${channel.agent} · ${channel.channel}`;

  const screen = document.getElementById("screen");
  let shown = null;
  const link = new Link(channel, token, {
    data: (bytes) => shown.data(bytes),
    live: () => shown.live(),
    state: setStatus,
  });
  if (channel.kind === KIND.DESKTOP) {
    const canControl = c.mode === "control" && !c.readOnly;
    document.getElementById("badge").hidden = canControl;
    view.viewOnly = !canControl;
    shown = startDesktop(screen, link, canControl);
  } else {
    const readOnly = Boolean(c.readOnly);
    document.getElementById("badge").hidden = !readOnly;
    view.viewOnly = readOnly;
    shown = startTerminal(screen, link);
  }
  view.inspect = shown.inspect;
  link.start();
}

main();
