/* The job page, live: states from the site's event stream, this party's log tails,
   and the metrics charts. Everything is text; nothing received is parsed as HTML. */
(function () {
  "use strict";
  const FINAL = ["succeeded", "failed", "rejected", "canceled", "timeout"];
  const BAD = ["failed", "rejected", "timeout", "canceled"];

  function text(tag, value, cls) {
    const node = document.createElement(tag);
    node.textContent = value;
    if (cls) node.className = cls;
    return node;
  }
  function badge(state) { return text("span", state.replace(/_/g, " "), "badge s-" + state); }
  function when(iso) { return (iso || "").replace("T", " ").replace(/Z$/, "").slice(0, 19); }
  function setState(node, state) {
    node.className = node.className.replace(/\bs-[a-z_]+/g, "").trim() + " s-" + state;
  }

  function updateGrid(job) {
    job.tasks.forEach(t => {
      const node = document.querySelector(`#dag .node[data-task="${CSS.escape(t.name)}"]`);
      if (node) {
        node.setAttribute("class", "node s-" + t.state);
        node.querySelector(".state").textContent = t.state;
      }
      t.parties.forEach(p => {
        const cell = document.querySelector(
          `#grid td[data-task="${CSS.escape(t.name)}"][data-party="${CSS.escape(p.party)}"]`);
        if (!cell) return;
        cell.textContent = p.state;
        cell.title = p.reason || "";
        setState(cell, p.state);
      });
    });
  }

  function problems(job) {
    const out = [];
    // a rejected job names the rejecting party: its line below says the same
    if (BAD.includes(job.state) && job.state !== "rejected" && job.reason) out.push(`job ${job.state}: ${job.reason}`);
    job.parties.filter(p => p.approval === "rejected").forEach(p => out.push(`${p.party} rejected: ${p.reason}`));
    job.tasks.forEach(t => t.parties.forEach(p => {
      if (["failed", "timeout"].includes(p.state)) out.push(`${t.name} @ ${p.party} ${p.state}: ${p.reason}`);
    }));
    return out;
  }

  function updateText(job) {
    document.getElementById("job-state").replaceChildren(badge(job.state));
    document.getElementById("job-reason").textContent = job.reason || "";
    document.getElementById("decisions").replaceChildren(...job.parties.map(p => {
      const li = document.createElement("li");
      li.append(text("span", `${p.party}: ${p.approval}`, "chip a-" + p.approval), " ",
                text("span", p.reason || "", "muted"));
      return li;
    }));
    const list = problems(job);
    document.getElementById("problems").hidden = list.length === 0;
    document.getElementById("problem-list").replaceChildren(...list.map(s => text("li", s)));
    document.querySelector("#timeline tbody").replaceChildren(...job.history.slice().reverse().map(h => {
      const tr = document.createElement("tr");
      const what = h.entity.replace(/_/g, " ") + (h.task ? " " + h.task : "") + (h.party ? " @ " + h.party : "");
      const change = document.createElement("td");
      change.append(h.from ? h.from + " → " : "", text("b", h.to));
      tr.append(text("td", when(h.at), "small"), text("td", what), change,
                text("td", h.reason || "", "reason"), text("td", h.actor, "small"));
      return tr;
    }));
  }

  function follow(root) {
    const live = document.getElementById("live");
    const source = new EventSource(root.dataset.events);
    source.onopen = () => live.classList.add("on");
    source.onerror = () => live.classList.remove("on");
    source.onmessage = ev => {
      const job = JSON.parse(ev.data);
      root.dataset.state = job.state;
      updateGrid(job);
      updateText(job);
    };
  }

  function logs() {
    document.querySelectorAll("details.log").forEach(d => {
      const pre = d.querySelector("pre");
      const load = () => fetch(d.dataset.url, { credentials: "same-origin" })
        .then(r => r.ok ? r.text() : Promise.reject(r.status))
        .then(t => { pre.textContent = t || "(nothing logged yet)"; pre.scrollTop = pre.scrollHeight; })
        .catch(() => { pre.textContent = "(log unavailable)"; });
      let timer = null;
      d.addEventListener("toggle", () => {
        clearInterval(timer);
        if (d.open) { load(); timer = setInterval(load, 3000); }
      });
    });
  }

  function metrics(root) {
    const box = document.getElementById("metrics");
    const empty = document.getElementById("no-metrics");
    const load = () => fetch(box.dataset.url, { credentials: "same-origin" })
      .then(r => r.ok ? r.json() : { metrics: [] })
      .catch(() => ({ metrics: [] }))
      .then(body => {
        const drawn = window.RayfedChart.render(document.getElementById("charts"), body.metrics || []);
        empty.hidden = drawn > 0;
        box.dataset.loaded = String(drawn);
      });
    load();
    // While the job runs, and once more after it ended (its last points arrive at its end).
    let loadedFinal = FINAL.includes(root.dataset.state);
    setInterval(() => {
      const ended = FINAL.includes(root.dataset.state);
      if (!ended || !loadedFinal) { load(); loadedFinal = ended; }
    }, 5000);
  }

  document.addEventListener("DOMContentLoaded", () => {
    const root = document.getElementById("job");
    if (!root) return;
    follow(root);
    logs();
    metrics(root);
  });
})();
