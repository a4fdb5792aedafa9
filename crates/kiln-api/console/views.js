// The console's pages. Each renders from the API and keeps itself current
// from the live events that app.js dispatches.
"use strict";

(() => {
const { el, fill, api, notice, onLive, fmtDuration, fmtBytes, fmtTime, status } = kiln;
const STAGES = ["Source", "Build", "Version", "Bake", "Deploy"];
const enc = encodeURIComponent;

function table(headers, rows) {
  return el("table", {},
    el("thead", {}, el("tr", {}, headers.map((h) => el("th", {}, h)))),
    el("tbody", {}, rows));
}

function button(label, attrs, action) {
  const b = el("button", { type: "button", ...attrs }, label);
  b.addEventListener("click", async () => {
    b.disabled = true;
    try { await action(); notice(""); } catch (e) { notice(String(e.message || e)); }
    b.disabled = false;
  });
  return b;
}

// ------------------------------------------------------------ pipelines

kiln.views.pipelines = async (view, args) => {
  if (args.length) return pipelinePage(view, args[0], args[1]);
  const [pipelines, executions] = await Promise.all([
    api("GET", "/v1/pipelines"), api("GET", "/v1/executions?limit=200")]);
  const latest = {};
  for (const e of executions) if (!latest[e.pipeline]) latest[e.pipeline] = e;
  const body = el("tbody");
  const draw = () => fill(body, ...pipelines.map((p) => {
    const e = latest[p.name];
    return el("tr", { "data-pipeline": p.name },
      el("td", {}, el("a", { href: `#/pipelines/${enc(p.name)}` }, p.name)),
      el("td", {}, p.repository), el("td", {}, p.branch),
      el("td", {}, e ? status(e.status) : "—"),
      el("td", {}, e ? `#${e.seq} ${e.trigger}` : ""),
      el("td", {}, e ? fmtTime(e.created) : ""));
  }));
  draw();
  fill(view, el("h1", {}, "Pipelines"),
    el("table", {}, el("thead", {}, el("tr", {},
      ["Name", "Repository", "Branch", "Latest execution", "Trigger", "Started"].map((h) => el("th", {}, h)))), body));
  onLive((kind, e) => {
    if (kind !== "execution") return;
    const cur = latest[e.pipeline];
    if (!cur || cur.seq <= e.seq) { latest[e.pipeline] = e; draw(); }
  });
};

async function pipelinePage(view, name, chosenId) {
  const pipeline = await api("GET", `/v1/pipelines/${enc(name)}`);
  const list = await api("GET", `/v1/executions?pipeline=${enc(name)}&limit=1000`);
  const executions = new Map(list.map((e) => [e.id, e]));
  let selected = chosenId && executions.has(chosenId) ? chosenId : (list[0] && list[0].id);
  let stage = null;
  const head = el("div"), graph = el("div"), vars = el("div"), rows = el("tbody");
  const logTitle = el("h2", {}, "Log"), log = el("pre", { class: "log", id: "stage-log" });
  let tail = null;

  const sorted = () => [...executions.values()].sort((a, b) => b.seq - a.seq);
  const pickStage = (e) => {
    const by = (s) => e.stages.find((x) => x.status === s);
    const st = by("InProgress") || by("Failed") || [...e.stages].reverse().find((x) => x.status !== "Pending");
    return st ? st.name : "Source";
  };

  function follow(e, name) {
    if (tail) tail.stop();
    log.textContent = "";
    logTitle.textContent = `Log of ${name}`;
    let offset = 0, ended = false, source = null, timer = null;
    const open = () => {
      source = new EventSource(`/v1/executions/${enc(e.id)}/logs/stream?stage=${enc(name)}&offset=${offset}`);
      source.addEventListener("log", (ev) => {
        const d = JSON.parse(ev.data);
        offset = d.next_offset;
        const atEnd = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
        log.append(document.createTextNode(d.text));
        if (atEnd) log.scrollTop = log.scrollHeight;
      });
      source.addEventListener("end", () => { ended = true; source.close(); });
      // The daemon ends a stream after a while: resume where it stopped.
      source.addEventListener("error", () => {
        source.close();
        if (!ended) timer = setTimeout(open, 500);
      });
    };
    open();
    tail = { stop() { ended = true; clearTimeout(timer); if (source) source.close(); } };
  }

  function draw() {
    const e = executions.get(selected);
    fill(head,
      el("div", { class: "row" },
        el("h1", {}, pipeline.name),
        button("Run pipeline", { id: "run" }, async () => {
          const started = await api("POST", `/v1/pipelines/${enc(name)}/executions`, {});
          executions.set(started.id, started);
          selected = started.id; stage = null;
          history.replaceState(null, "", `#/pipelines/${enc(name)}/${enc(started.id)}`);
          draw();
        })),
      el("p", { class: "muted" }, `${pipeline.repository} · branch ${pipeline.branch} · ${pipeline.file}`));
    if (!e) {
      fill(graph, el("p", {}, "No execution yet."));
      fill(vars);
    } else {
      if (!stage) { stage = pickStage(e); follow(e, stage); }
      fill(graph,
        el("div", { class: "row" },
          el("h2", {}, `Execution #${e.seq}`), status(e.status),
          el("span", { class: "muted" }, `${e.trigger} · commit ${(e.commit_id || "").slice(0, 10)} · ${fmtDuration(e.started, e.ended)}`),
          e.status === "Failed" ? button("Retry", { id: "retry" }, async () => {
            const again = await api("POST", `/v1/executions/${enc(e.id)}/retry`);
            executions.set(again.id, again);
            selected = again.id; stage = null;
            draw();
          }) : null),
        e.reason ? el("p", { class: "muted" }, e.reason) : null,
        el("div", { class: "graph", id: "stage-graph", "data-execution": e.id },
          STAGES.map((n, i) => {
            const s = e.stages.find((x) => x.name === n) || { name: n, status: "Pending" };
            const box = el("div", {
              class: `stage${n === stage ? " chosen" : ""}`, "data-stage": n, "data-status": s.status,
              title: "Show this stage's log",
            },
            el("div", { class: "name" }, n), status(s.status),
            el("div", { class: "muted" }, fmtDuration(s.started, s.ended)),
            el("div", { class: "summary" }, s.summary || ""));
            box.addEventListener("click", () => { stage = n; follow(e, n); draw(); });
            return i ? [el("span", { class: "arrow" }, "→"), box] : [box];
          })));
      const namespaces = Object.entries(e.variables || {});
      fill(vars, el("h2", {}, "Variables"),
        namespaces.length ? el("div", { class: "grid" }, namespaces.map(([ns, kv]) =>
          el("section", { class: "card", "data-namespace": ns }, el("strong", {}, ns),
            el("dl", { class: "kv" }, Object.entries(kv).map(([k, v]) => [el("dt", {}, k), el("dd", {}, v)])))))
          : el("p", { class: "muted" }, "None yet."));
    }
    fill(rows, ...sorted().map((x) => {
      const tr = el("tr", { class: x.id === selected ? "selected" : "", "data-execution": x.id },
        el("td", {}, el("a", { href: `#/pipelines/${enc(name)}/${enc(x.id)}` }, `#${x.seq}`)),
        el("td", {}, status(x.status)), el("td", {}, x.trigger),
        el("td", {}, el("code", {}, (x.commit_id || "").slice(0, 10))),
        el("td", {}, fmtTime(x.created)), el("td", {}, fmtDuration(x.started, x.ended)));
      return tr;
    }));
  }

  draw();
  fill(view, head, graph, logTitle, log, vars, el("h2", {}, "Executions"),
    el("table", {}, el("thead", {}, el("tr", {},
      ["#", "Status", "Trigger", "Commit", "Created", "Duration"].map((h) => el("th", {}, h)))), rows));
  onLive((kind, e) => {
    if (kind !== "execution" || e.pipeline !== name) return;
    executions.set(e.id, e);
    draw();
  });
}

// --------------------------------------------------------------- images

kiln.views.images = async (view, args) => {
  if (args.length >= 3) return imagePage(view, args[0], args[1], args[2]);
  const images = await api("GET", "/v1/images");
  images.reverse();
  fill(view, el("h1", {}, "Images"), table(
    ["Image", "Status", "Tests", "Size", "Created", "Groups using it"],
    images.map((i) => el("tr", { "data-image": i.reference },
      el("td", {}, el("a", { href: `#/images/${i.reference.split("/").map(enc).join("/")}` }, i.reference)),
      el("td", {}, status(i.status)), el("td", {}, i.tests), el("td", {}, fmtBytes(i.size)),
      el("td", {}, fmtTime(i.created)),
      el("td", {}, i.groups.map((g) => el("a", { href: `#/groups/${enc(g)}` }, g, " ")))))));
};

async function imagePage(view, name, version, build) {
  const i = await api("GET", `/v1/images/${enc(name)}/${enc(version)}/${enc(build)}`);
  const kv = (pairs) => el("dl", { class: "kv" }, pairs.map(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
  fill(view,
    el("h1", {}, i.reference),
    el("section", { class: "card" }, kv([
      ["Status", status(i.status)], ["Digest", el("code", {}, i.digest)], ["Created", fmtTime(i.created)],
      ["Source commit", i.source_commit || "—"], ["Parent", i.parent || "—"], ["Size", fmtBytes(i.size)],
      ["Tests", i.tests], ["Test log", i.test_log || "—"],
      ["Entrypoint", JSON.stringify(i.entrypoint)], ["Cmd", JSON.stringify(i.cmd)],
      ["Groups using it", i.groups.length ? i.groups.map((g) => el("a", { href: `#/groups/${enc(g)}` }, g, " ")) : "none"],
    ])),
    el("h2", {}, "Built by"),
    i.built_by ? el("section", { class: "card", id: "built-by" }, kv([
      ["Execution", el("a", { href: `#/pipelines/${enc(i.built_by.pipeline)}/${enc(i.built_by.execution)}` },
        `${i.built_by.pipeline} #${i.built_by.seq}`)],
      ...Object.entries(i.built_by.build_variables),
      ["Layer cache", i.built_by.bake_cache
        ? `${i.built_by.bake_cache.hits} components from the cache, ${i.built_by.bake_cache.misses} ran` : "—"],
    ])) : el("p", { class: "muted" }, "Not made by a pipeline (imported or baked by hand)."),
    el("h2", {}, "Parents"),
    i.parents.length ? el("ol", {}, i.parents.map((p) => el("li", {}, p))) : el("p", { class: "muted" }, "None."),
    el("h2", {}, "Components"),
    table(["Document", "Digest"], i.components.map((c) => el("tr", {}, el("td", {}, c.path), el("td", {}, el("code", {}, c.digest))))),
    el("h2", {}, "Layers"),
    table(["Layer", "Size", "Created by"], i.layers.map((l) => el("tr", {},
      el("td", {}, el("code", {}, l.digest.slice(0, 19))), el("td", {}, fmtBytes(l.size)), el("td", {}, l.created_by)))));
}

// --------------------------------------------------------------- groups

kiln.views.groups = async (view, args) => {
  if (args.length) return groupPage(view, args[0]);
  const groups = await api("GET", "/v1/groups");
  const body = el("tbody");
  const draw = () => fill(body, ...groups.map((g) => el("tr", { "data-group": g.name },
    el("td", {}, el("a", { href: `#/groups/${enc(g.name)}` }, g.name)),
    el("td", {}, `${g.template} v${g.version}`),
    el("td", {}, `${g.spec.min} / ${g.spec.desired} / ${g.spec.max}`),
    el("td", {}, String(g.instances.filter((i) => i.state === "in-service").length)),
    el("td", {}, g.load_balancer))));
  draw();
  fill(view, el("h1", {}, "Groups"), el("table", {}, el("thead", {}, el("tr", {},
    ["Group", "Template", "Min / desired / max", "In service", "Load balancer"].map((h) => el("th", {}, h)))), body));
  onLive((kind, g) => {
    if (kind !== "group") return;
    const i = groups.findIndex((x) => x.name === g.name);
    if (i >= 0) groups[i] = g; else groups.push(g);
    draw();
  });
};

const COLORS = ["#0073bb", "#ec7211", "#1d8102", "#d13212", "#8c4fff", "#687078"];

function chart(samples) {
  const versions = [...new Set(samples.flatMap((s) => Object.keys(s.counts)))].sort((a, b) => a - b);
  const W = 600, H = 200, P = 24;
  const t0 = samples.length ? samples[0].t : 0, t1 = samples.length ? samples[samples.length - 1].t : 1;
  const max = Math.max(1, ...samples.flatMap((s) => Object.values(s.counts)));
  const x = (t) => P + ((t - t0) / Math.max(1, t1 - t0)) * (W - 2 * P);
  const y = (n) => H - P - (n / max) * (H - 2 * P);
  const svg = el("svg", { class: "chart", viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", id: "rollout-chart", role: "img" },
    el("title", {}, "Instances by version over time"),
    el("line", { x1: P, y1: H - P, x2: W - P, y2: H - P, stroke: "#879596" }),
    el("text", { x: 2, y: P, "font-size": 11, fill: "#687078" }, String(max)),
    el("text", { x: 2, y: H - P, "font-size": 11, fill: "#687078" }, "0"),
    versions.map((v, i) => el("polyline", {
      fill: "none", stroke: COLORS[i % COLORS.length], "stroke-width": 2.5, "data-version": v,
      points: samples.map((s) => `${x(s.t).toFixed(1)},${y(s.counts[v] || 0).toFixed(1)}`).join(" "),
    })));
  const legend = el("div", { class: "legend" }, versions.map((v, i) => {
    const sw = el("span", { class: "swatch" });
    sw.style.background = COLORS[i % COLORS.length];
    return el("span", {}, sw, `version ${v}`);
  }));
  return [svg, legend];
}

async function groupPage(view, name) {
  let g = await api("GET", `/v1/groups/${enc(name)}`);
  const samples = [];
  let last = null;
  const rates = {};
  const head = el("div"), insts = el("div"), roll = el("div"), lb = el("div"), hist = el("div");
  const desired = el("input", { type: "number", id: "desired", min: 0, value: g.spec.desired });

  function sample() {
    const counts = {};
    for (const i of g.instances) if (i.state !== "terminated") counts[i.version] = (counts[i.version] || 0) + 1;
    const now = Date.now();
    samples.push({ t: now, counts });
    if (samples.length > 600) samples.shift();
    if (last) {
      const dt = (now - last.t) / 1000;
      for (const b of g.backends) {
        const before = last.requests[b.id];
        if (before !== undefined && dt > 0) rates[b.id] = (b.requests - before) / dt;
      }
    }
    last = { t: now, requests: Object.fromEntries(g.backends.map((b) => [b.id, b.requests])) };
  }

  function draw() {
    fill(head,
      el("div", { class: "row" }, el("h1", {}, g.name),
        el("span", { class: "muted" }, `template ${g.template} version ${g.version} · ${g.load_balancer}`)),
      el("div", { class: "row" },
        el("label", {}, "Desired capacity ", desired),
        button("Scale", { id: "scale" }, async () => {
          g = await api("POST", `/v1/groups/${enc(name)}/scale`, { desired: Number(desired.value) });
          draw();
        }),
        button("Roll back", { id: "rollback", class: "secondary" }, async () => {
          g = await api("POST", `/v1/groups/${enc(name)}/rollback`);
          draw();
        }),
        el("span", { class: "muted" }, `min ${g.spec.min} · max ${g.spec.max}`)));
    fill(insts, el("h2", {}, "Instances"), table(["Instance", "Version", "State", "Reason", "Started"],
      g.instances.map((i) => el("tr", { "data-instance": i.id, "data-version": i.version, "data-state": i.state },
        el("td", {}, el("code", {}, i.id)), el("td", {}, String(i.version)), el("td", {}, status(i.state)),
        el("td", {}, i.reason), el("td", {}, fmtTime(i.created))))));
    fill(roll, el("h2", {}, "Instances by version"), ...chart(samples));
    fill(lb, el("h2", {}, "Load balancer"), table(
      ["Instance", "In service", "Requests", "Rate (req/s)", "Failures", "In flight", "p50 ms", "p90 ms", "p99 ms"],
      g.backends.map((b) => el("tr", { "data-backend": b.id },
        el("td", {}, el("code", {}, b.id)), el("td", {}, b.draining ? "draining" : String(b.in_service)),
        el("td", {}, String(b.requests)), el("td", {}, rates[b.id] === undefined ? "—" : rates[b.id].toFixed(1)),
        el("td", {}, String(b.failures)), el("td", {}, String(b.in_flight)),
        el("td", {}, b.p50_ms.toFixed(1)), el("td", {}, b.p90_ms.toFixed(1)), el("td", {}, b.p99_ms.toFixed(1))))));
    fill(hist, el("h2", {}, "Rollouts"), table(["#", "From", "To", "State", "Reason", "Started", "Ended"],
      [...g.rollouts].reverse().map((r) => el("tr", {},
        el("td", {}, String(r.id)), el("td", {}, String(r.from_version)), el("td", {}, String(r.to_version)),
        el("td", {}, status(r.state)), el("td", {}, r.reason), el("td", {}, fmtTime(r.started)), el("td", {}, fmtTime(r.ended))))));
  }

  sample();
  draw();
  fill(view, head, insts, roll, lb, hist);
  onLive((kind, data) => {
    if (kind !== "group" || data.name !== name) return;
    g = data;
    sample();
    draw();
  });
  // The chart moves on even when nothing changes.
  const ticker = setInterval(() => {
    if (!document.body.contains(roll)) { clearInterval(ticker); return; }
    sample();
    fill(roll, el("h2", {}, "Instances by version"), ...chart(samples));
  }, 2000);
}

// ----------------------------------------------------------- parameters

kiln.views.parameters = async (view) => {
  const params = await api("GET", "/v1/parameters");
  const hist = el("div");
  const show = async (name) => {
    const versions = await api("GET", `/v1/parameters/history?name=${enc(name)}`);
    fill(hist, el("h2", {}, `History of ${name}`), table(["Version", "Value", "Time"],
      [...versions].reverse().map((p) => el("tr", {}, el("td", {}, String(p.version)),
        el("td", {}, el("code", {}, p.value)), el("td", {}, fmtTime(p.time))))));
  };
  fill(view, el("h1", {}, "Parameters"), table(["Name", "Version", "Value", "Changed"],
    params.map((p) => {
      const link = el("a", { href: "#/parameters", "data-param": p.name }, p.name);
      link.addEventListener("click", (ev) => { ev.preventDefault(); show(p.name).catch((e) => notice(String(e.message))); });
      return el("tr", {}, el("td", {}, link), el("td", {}, String(p.version)),
        el("td", {}, el("code", {}, p.secret ? "*** (secret)" : p.value)), el("td", {}, fmtTime(p.time)));
    })), hist);
};
})();
