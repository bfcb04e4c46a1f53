// The appliance's status page: plain JavaScript against the management API
// (docs/API.md). The page itself holds no data and is served without a
// token; every call it makes carries the token typed into it, kept in this
// tab's sessionStorage only. What a guest prints reaches the page as text
// (textContent), never as markup.
"use strict";

const $ = (sel) => document.querySelector(sel);
let token = sessionStorage.getItem("hyperroot-token") || "";
let timer = null;
let follow = null; // the console stream's AbortController
const lastCPU = new Map(); // vm -> [seconds of the page's clock, cpu_seconds]

async function call(method, path) {
  const r = await fetch(path, { method, headers: { Authorization: "Bearer " + token }, cache: "no-store" });
  if (!r.ok) {
    let msg = "HTTP " + r.status;
    try { msg = (await r.json()).error + " (" + msg + ")"; } catch (e) { /* not JSON */ }
    throw new Error(msg);
  }
  return r;
}

function cell(tr, text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  tr.appendChild(td);
  return td;
}

function size(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : String(n)) + " " + units[i];
}

function button(label, cls, onclick) {
  const b = document.createElement("button");
  b.textContent = label;
  b.className = cls;
  b.addEventListener("click", onclick);
  return b;
}

function renderVMs(vms) {
  const now = performance.now() / 1000;
  const body = $("#vms tbody");
  body.replaceChildren();
  for (const vm of vms) {
    const tr = document.createElement("tr");
    tr.dataset.vm = vm.name;
    tr.dataset.state = vm.state;
    cell(tr, vm.name);
    cell(tr, vm.state, "state");
    cell(tr, vm.pid || "", "num");
    cell(tr, vm.cpus, "num");
    cell(tr, size(vm.memory_bytes), "num");
    let cpu = "";
    const prev = lastCPU.get(vm.name);
    if (vm.state === "running" && prev && now > prev[0] && vm.cpu_seconds >= prev[1]) {
      cpu = (100 * (vm.cpu_seconds - prev[1]) / (now - prev[0])).toFixed(0) + " %";
    }
    lastCPU.set(vm.name, [now, vm.cpu_seconds || 0]);
    cell(tr, cpu, "num");
    cell(tr, vm.memory_used_bytes ? size(vm.memory_used_bytes) : "", "num");
    cell(tr, (vm.disks || []).map((d) => d.path + (d.readonly ? " (ro)" : "")).join(", "));
    cell(tr, (vm.nics || []).map((n) => n.port + " " + n.network + " " + n.mac).join(", "));
    const actions = cell(tr, "");
    const op = vm.state === "running" ? "stop" : "start";
    actions.appendChild(button(op, op, () => act(vm.name, op)));
    actions.appendChild(button("console", "console", () => watch(vm.name)));
    body.appendChild(tr);
  }
}

function renderPorts(ports) {
  const body = $("#ports tbody");
  body.replaceChildren();
  for (const p of ports) {
    const tr = document.createElement("tr");
    tr.dataset.port = p.name;
    cell(tr, p.name);
    cell(tr, p.rx_packets, "num");
    cell(tr, size(p.rx_bytes), "num");
    cell(tr, p.tx_packets, "num");
    cell(tr, size(p.tx_bytes), "num");
    cell(tr, Object.entries(p.drops || {}).map(([r, n]) => r + "=" + n).join(", "));
    body.appendChild(tr);
  }
}

async function refresh() {
  try {
    const [host, vms, ports] = await Promise.all([
      call("GET", "/v1/host").then((r) => r.json()),
      call("GET", "/v1/vms").then((r) => r.json()),
      call("GET", "/v1/ports").then((r) => r.json()),
    ]);
    $("#host").textContent = "hyperroot " + host.version + ", " + host.cpus + " CPUs, " + size(host.memory_bytes) + ", kvm " + host.kvm;
    renderVMs(vms);
    renderPorts(ports);
    $("#status").textContent = "updated " + new Date().toLocaleTimeString();
  } catch (e) {
    $("#status").textContent = e.message;
  }
}

async function act(name, op) {
  try {
    $("#status").textContent = op + " " + name + "...";
    await call("POST", "/v1/vms/" + encodeURIComponent(name) + "/" + op);
  } catch (e) {
    $("#status").textContent = op + " " + name + ": " + e.message;
    return;
  }
  refresh();
}

// watch follows one VM's console: its last lines, then each as it comes.
async function watch(name) {
  if (follow) follow.abort();
  follow = new AbortController();
  const pre = $("#console");
  pre.textContent = "";
  $("#console-vm").textContent = name;
  const lines = [];
  const show = () => {
    pre.textContent = lines.join("\n");
    pre.scrollTop = pre.scrollHeight;
  };
  try {
    const r = await fetch("/v1/vms/" + encodeURIComponent(name) + "/console?tail=100",
      { headers: { Authorization: "Bearer " + token }, signal: follow.signal });
    if (!r.ok) throw new Error("HTTP " + r.status);
    const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
    let rest = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      const parts = (rest + value).split("\n");
      rest = parts.pop();
      lines.push(...parts);
      lines.splice(0, Math.max(0, lines.length - 300));
      show();
    }
  } catch (e) {
    if (e.name !== "AbortError") $("#console-vm").textContent = name + ": " + e.message;
  }
}

$("#login").addEventListener("submit", (ev) => {
  ev.preventDefault();
  token = $("#token").value.trim();
  sessionStorage.setItem("hyperroot-token", token);
  $("#token").value = "";
  if (timer) clearInterval(timer);
  refresh();
  timer = setInterval(refresh, 2000);
});

if (token) {
  refresh();
  timer = setInterval(refresh, 2000);
}
