// The similarity gauge: one pair -> animated dial (calibrated percent) + raw cosine; or a batch -> table + CSV.
(function () {
  "use strict";
  var ui = window.FaqbotUI;
  var h = ui.h;
  var $ = function (id) { return document.getElementById(id); };

  var EXAMPLES = [
    ["怎么退货？", "我买的东西不想要了，能退吗"],
    ["可以开发票吗", "是否支持开具发票？"],
    ["下单后多久发货？", "付款以后什么时候发出"],
    ["忘记密码怎么办", "怎么重置登录密码"],
    ["会员积分有什么用？", "今天天气怎么样"],
  ];
  var BATCH_CHUNK = 256; // the API's batch limit
  var BATCH_MAX_LINES = 5000;
  var GAUGE = { cx: 130, cy: 138, r: 104 };

  var config = {};
  var shownPercent = 0;
  var animation = null;
  var requestSeq = 0;
  var batchRows = [];

  var gaugeParts = drawGauge($("gauge-svg"));

  ui.loadConfig().then(function (loaded) {
    config = loaded || {};
    ui.initNav(config);
    if (typeof config.min_confidence === "number") {
      // The bot answers by confidence, the measured chance that its answer is right, read from the
      // whole ranking of the KB: no percent of one pair is that line, so none is drawn on the dial.
      var line = formatNumber(config.min_confidence);
      $("threshold-value").textContent = "置信度 ≥ " + line;
      var note = $("decision-note");
      note.textContent = "机器人不按这里的相似度作答，而是按置信度：置信度是回答正确的实测概率（0–100），" +
        "达到 " + line + " 才直接回答。两句话的相似度高低，不等于机器人会不会作答。";
      note.hidden = false;
    } else if (typeof config.threshold_percent === "number") {
      $("threshold-value").textContent = ui.formatPercent(config.threshold_percent);
      drawThreshold(config.threshold_percent);
    }
  });

  function formatNumber(value) {
    return String(Math.round(value * 10) / 10);
  }

  // ------------------------------------------------------------------ single pair
  EXAMPLES.forEach(function (pair) {
    $("examples").appendChild(h("button", {
      class: "chip", type: "button", title: pair[0] + " ↔ " + pair[1],
      onclick: function () {
        $("sentence-a").value = pair[0];
        $("sentence-b").value = pair[1];
        computePair();
      },
    }, [h("span", {}, [pair[0]]), h("i", {}, ["↔"]), h("span", {}, [pair[1]])]));
  });

  $("pair-form").addEventListener("submit", function (event) {
    event.preventDefault();
    computePair();
  });
  ["sentence-a", "sentence-b"].forEach(function (id) {
    $(id).addEventListener("keydown", function (event) {
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey) && !event.isComposing) {
        event.preventDefault();
        computePair();
      }
    });
  });
  $("swap").addEventListener("click", function () {
    var a = $("sentence-a").value;
    $("sentence-a").value = $("sentence-b").value;
    $("sentence-b").value = a;
  });

  function computePair() {
    var a = $("sentence-a").value;
    var b = $("sentence-b").value;
    showError("pair-error", null);
    if (!a.trim() || !b.trim()) {
      showError("pair-error", "请把句子 A 和句子 B 都填上。");
      (a.trim() ? $("sentence-b") : $("sentence-a")).focus();
      return;
    }
    var seq = ++requestSeq;
    var button = $("compute");
    button.disabled = true;
    button.replaceChildren(h("span", { class: "spinner" }), "计算中…");
    $("gauge").setAttribute("aria-busy", "true");
    ui.api("/similarity", { body: { sentence_a: a, sentence_b: b } })
      .then(function (result) {
        if (seq !== requestSeq) return;
        $("cosine-value").textContent = result.similarity.toFixed(4);
        animateTo(result.percent);
        showVerdict(result.percent);
      })
      .catch(function (error) {
        if (seq === requestSeq) showError("pair-error", ui.politeError(error));
      })
      .finally(function () {
        if (seq !== requestSeq) return;
        button.disabled = false;
        button.replaceChildren("计算相似度");
        $("gauge").removeAttribute("aria-busy");
      });
  }

  function showVerdict(percent) {
    var verdict = $("verdict");
    var threshold = cosineLine();
    var kind;
    var message;
    if (threshold === null) {
      kind = "";
      message = "相似度 " + ui.formatPercent(percent) + "。";
    } else if (percent >= threshold) {
      kind = "is-same";
      message = "意思相同：高于作答线，机器人会把它们当成同一个问题。";
    } else if (percent >= threshold - 10) {
      kind = "is-near";
      message = "比较接近，但低于作答线：机器人不会直接作答，而是记为未命中问题。";
    } else {
      kind = "is-different";
      message = "意思不同：这两句话问的不是同一件事。";
    }
    verdict.className = "verdict " + kind;
    verdict.textContent = message;
  }

  // ------------------------------------------------------------------ gauge drawing
  function point(percent, radius) {
    var angle = Math.PI * (1 - percent / 100);
    return [GAUGE.cx + radius * Math.cos(angle), GAUGE.cy - radius * Math.sin(angle)];
  }

  function drawGauge(svg) {
    var start = point(0, GAUGE.r);
    var end = point(100, GAUGE.r);
    var arcPath = "M " + start.join(" ") + " A " + GAUGE.r + " " + GAUGE.r + " 0 0 1 " + end.join(" ");
    svg.appendChild(ui.svg("path", { d: arcPath, class: "gauge-track" }));
    var arc = ui.svg("path", { d: arcPath, class: "gauge-arc", pathLength: 100, "stroke-dasharray": "0 1000", opacity: 0 });
    svg.appendChild(arc);
    for (var p = 0; p <= 100; p += 10) {
      var major = p % 20 === 0;
      var from = point(p, GAUGE.r - 16);
      var to = point(p, GAUGE.r - (major ? 24 : 20));
      svg.appendChild(ui.svg("line", { x1: from[0], y1: from[1], x2: to[0], y2: to[1], class: "gauge-tick" }));
      if (major) {
        var at = point(p, GAUGE.r - 34);
        var label = ui.svg("text", { x: at[0], y: at[1] + 3.5, "text-anchor": "middle", class: "gauge-tick-label" });
        label.textContent = String(p);
        svg.appendChild(label);
      }
    }
    var thresholdGroup = ui.svg("g", {});
    svg.appendChild(thresholdGroup);
    var needle = ui.svg("line", { x1: GAUGE.cx, y1: GAUGE.cy, x2: GAUGE.cx - (GAUGE.r - 44), y2: GAUGE.cy,
      class: "gauge-needle", transform: "rotate(0 " + GAUGE.cx + " " + GAUGE.cy + ")" });
    svg.appendChild(needle);
    svg.appendChild(ui.svg("circle", { cx: GAUGE.cx, cy: GAUGE.cy, r: 6, class: "gauge-hub" }));
    return { arc: arc, needle: needle, thresholdGroup: thresholdGroup };
  }

  function drawThreshold(percent) {
    var group = gaugeParts.thresholdGroup;
    group.replaceChildren();
    var inner = point(percent, GAUGE.r - 12);
    var outer = point(percent, GAUGE.r + 12);
    group.appendChild(ui.svg("line", { x1: inner[0], y1: inner[1], x2: outer[0], y2: outer[1], class: "gauge-threshold" }));
    var at = point(percent, GAUGE.r + 20);
    var label = ui.svg("text", { x: at[0], y: at[1], "text-anchor": percent > 50 ? "start" : "end", class: "gauge-threshold-label" });
    label.textContent = "作答线";
    group.appendChild(label);
  }

  // The 作答线 as a pair percent, or null when the confidence decides (or the index is not loaded).
  function cosineLine() {
    if (typeof config.min_confidence === "number") return null;
    return typeof config.threshold_percent === "number" ? config.threshold_percent : null;
  }

  function colorFor(percent) {
    var line = cosineLine();
    var threshold = line === null ? 80 : line;
    if (percent >= threshold) return "#16a34a";
    if (percent >= threshold - 10) return "#f59e0b";
    return "#94a3b8";
  }

  function renderGauge(percent) {
    var clamped = Math.max(0, Math.min(100, percent));
    gaugeParts.arc.setAttribute("stroke-dasharray", clamped.toFixed(2) + " 1000");
    gaugeParts.arc.setAttribute("opacity", clamped > 0.3 ? "1" : "0");
    gaugeParts.arc.style.stroke = colorFor(clamped);
    gaugeParts.needle.setAttribute("transform", "rotate(" + (clamped * 1.8).toFixed(2) + " " + GAUGE.cx + " " + GAUGE.cy + ")");
    $("gauge-value").textContent = clamped.toFixed(1);
  }

  function animateTo(target) {
    var gauge = $("gauge");
    var from = shownPercent;
    var started = null;
    var duration = window.matchMedia("(prefers-reduced-motion: reduce)").matches ? 0 : 900;
    if (animation) cancelAnimationFrame(animation);
    gauge.setAttribute("data-state", "animating");
    function step(now) {
      if (started === null) started = now;
      var t = duration ? Math.min(1, (now - started) / duration) : 1;
      var eased = 1 - Math.pow(1 - t, 3);
      shownPercent = from + (target - from) * eased;
      renderGauge(shownPercent);
      if (t < 1) {
        animation = requestAnimationFrame(step);
      } else {
        shownPercent = target;
        renderGauge(target);
        animation = null;
        gauge.setAttribute("aria-valuenow", String(target));
        gauge.setAttribute("aria-valuetext", ui.formatPercent(target));
        gauge.setAttribute("data-state", "done");
      }
    }
    animation = requestAnimationFrame(step);
  }

  // ------------------------------------------------------------------ batch mode
  document.querySelectorAll("[data-mode]").forEach(function (tab) {
    tab.addEventListener("click", function () { setMode(tab.getAttribute("data-mode")); });
  });

  function setMode(mode) {
    document.querySelectorAll("[data-mode]").forEach(function (tab) {
      tab.setAttribute("aria-selected", tab.getAttribute("data-mode") === mode ? "true" : "false");
    });
    $("single-mode").hidden = mode !== "single";
    $("batch-mode").hidden = mode !== "batch";
  }

  $("batch-sample").addEventListener("click", function () {
    $("batch-input").value = EXAMPLES.map(function (pair) { return pair.join("\t"); }).join("\n");
  });
  $("batch-run").addEventListener("click", runBatch);
  $("batch-download").addEventListener("click", downloadCsv);

  function parseBatch(source) {
    var pairs = [];
    var problems = [];
    source.replace(/\r\n?/g, "\n").split("\n").forEach(function (line, index) {
      if (!line.trim()) return;
      var tab = line.indexOf("\t");
      if (tab < 0) {
        problems.push("第 " + (index + 1) + " 行没有 Tab 分隔");
        return;
      }
      var a = line.slice(0, tab).trim();
      var b = line.slice(tab + 1).split("\t")[0].trim();
      if (!a || !b) problems.push("第 " + (index + 1) + " 行有一侧是空的");
      else pairs.push([a, b]);
    });
    return { pairs: pairs, problems: problems };
  }

  function runBatch() {
    showError("batch-error", null);
    var parsed = parseBatch($("batch-input").value);
    if (parsed.problems.length) {
      showError("batch-error", parsed.problems.slice(0, 5).join("；") + (parsed.problems.length > 5 ? " 等 " + parsed.problems.length + " 处" : "") +
        "。每行应为：句子 A、Tab、句子 B。");
      return;
    }
    if (!parsed.pairs.length) {
      showError("batch-error", "请先粘贴要计算的句子对，每行一对，用 Tab 分隔。");
      return;
    }
    if (parsed.pairs.length > BATCH_MAX_LINES) {
      showError("batch-error", "一次最多计算 " + BATCH_MAX_LINES + " 对，请分批粘贴。");
      return;
    }
    var button = $("batch-run");
    button.disabled = true;
    $("batch-download").disabled = true;
    batchRows = [];
    var chunks = [];
    for (var i = 0; i < parsed.pairs.length; i += BATCH_CHUNK) chunks.push(parsed.pairs.slice(i, i + BATCH_CHUNK));
    var done = 0;
    var status = $("batch-status");
    status.textContent = "正在计算 0 / " + parsed.pairs.length;
    chunks.reduce(function (previous, chunk) {
      return previous.then(function () {
        return ui.api("/similarity", { body: { pairs: chunk }, timeout: 120000 }).then(function (response) {
          batchRows = batchRows.concat(response.results);
          done += chunk.length;
          status.textContent = "正在计算 " + done + " / " + parsed.pairs.length;
        });
      });
    }, Promise.resolve())
      .then(function () {
        status.textContent = "完成，共 " + batchRows.length + " 对";
        $("batch-download").disabled = false;
      })
      .catch(function (error) {
        status.textContent = batchRows.length ? "已完成 " + batchRows.length + " 对" : "";
        showError("batch-error", ui.politeError(error));
        $("batch-download").disabled = !batchRows.length;
      })
      .finally(function () {
        button.disabled = false;
        renderBatch();
      });
  }

  function renderBatch() {
    var body = $("batch-table").tBodies[0];
    body.replaceChildren();
    batchRows.forEach(function (row, index) {
      body.appendChild(h("tr", {}, [
        h("td", { class: "num hint" }, [String(index + 1)]),
        h("td", {}, [row.sentence_a]),
        h("td", {}, [row.sentence_b]),
        h("td", {}, [h("div", { class: "bar" }, [
          h("div", { class: "bar-track" }, [h("div", { class: "bar-fill", style: "width:" + Math.max(0, Math.min(100, row.percent)) +
            "%;background:" + colorFor(row.percent) })]),
          h("span", { class: "bar-text num" }, [ui.formatPercent(row.percent)]),
        ])]),
        h("td", { class: "num" }, [row.similarity.toFixed(4)]),
      ]));
    });
    $("batch-results").hidden = !batchRows.length;
  }

  function csvCell(value) {
    var text = String(value);
    if (/^[=+\-@\t\r]/.test(text)) text = "'" + text; // spreadsheet formula injection
    return /[",\n\r]/.test(text) ? '"' + text.replace(/"/g, '""') + '"' : text;
  }

  function downloadCsv() {
    var lines = [["sentence_a", "sentence_b", "percent", "similarity"].join(",")];
    batchRows.forEach(function (row) {
      lines.push([csvCell(row.sentence_a), csvCell(row.sentence_b), row.percent, row.similarity].join(","));
    });
    // BOM so Excel opens the Chinese text as UTF-8
    var blob = new Blob(["\ufeff" + lines.join("\r\n") + "\r\n"], { type: "text/csv;charset=utf-8" });
    var link = h("a", { href: URL.createObjectURL(blob), download: "similarity-" + new Date().toISOString().slice(0, 10) + ".csv" });
    document.body.appendChild(link);
    link.click();
    setTimeout(function () { URL.revokeObjectURL(link.href); link.remove(); }, 1000);
  }

  function showError(id, message) {
    var box = $(id);
    box.hidden = !message;
    box.textContent = message || "";
  }
})();
