// The admin review page: token login, grouped misses (attach / new FAQ / ignore), reload, lint, stats.
// It only talks to /admin/... over fetch with the Bearer token; every string from the server is rendered
// as text (misses are customer input).
(function () {
  "use strict";
  var ui = window.FaqbotUI;
  var h = ui.h;
  var $ = function (id) { return document.getElementById(id); };
  var TOKEN_KEY = "faqbot-admin-token";
  var TIME_ZONE = (Intl.DateTimeFormat().resolvedOptions().timeZone) || "UTC";

  var token = null;
  var currentKb = null; // the KB the page shows (several KBs: the picker in the index card)
  var missStatus = "open";
  var statsDays = 14;
  var knownFaqs = {}; // faq_id -> question, learned from candidates, stats and lint (for the "其他 FAQ" box)
  var loaded = { lint: false, stats: false };
  var toastTimer = null;

  // ------------------------------------------------------------------ login
  $("login-form").addEventListener("submit", function (event) {
    event.preventDefault();
    var given = $("token").value.trim();
    if (!given) {
      showAlert("login-error", "请输入管理令牌。");
      return;
    }
    login(given, true);
  });
  $("logout-button").addEventListener("click", function () { logout(null); });

  var saved = sessionStorage.getItem(TOKEN_KEY);
  if (saved) login(saved, false);
  else $("token").focus();

  function login(candidate, typed) {
    var button = $("login-button");
    button.disabled = true;
    showAlert("login-error", null);
    ui.api("/admin/index", { token: candidate })
      .then(function (info) {
        token = candidate;
        sessionStorage.setItem(TOKEN_KEY, candidate);
        $("token").value = "";
        $("login-view").hidden = true;
        $("admin-view").hidden = false;
        $("session-box").hidden = false;
        renderIndex(info);
        loadMisses();
        loadFaqs().catch(function () { /* the picker falls back to the FAQs seen in candidates */ });
      })
      .catch(function (error) {
        sessionStorage.removeItem(TOKEN_KEY);
        if (typed || error.status !== 401) showAlert("login-error", error.status === 404
          ? "管理后台未开启：请在服务端设置 FAQBOT_ADMIN_TOKEN。" : ui.politeError(error));
        $("token").focus();
      })
      .finally(function () { button.disabled = false; });
  }

  function logout(message) {
    token = null;
    currentKb = null;
    sessionStorage.removeItem(TOKEN_KEY);
    $("admin-view").hidden = true;
    $("session-box").hidden = true;
    $("login-view").hidden = false;
    showAlert("login-error", message);
    loaded = { lint: false, stats: false };
    $("token").focus();
  }

  // Every admin call: the token, the KB picked (with several), and back to the login form if it stopped working.
  function call(path, options) {
    options = options || {};
    options.token = token;
    if (currentKb) path += (path.indexOf("?") < 0 ? "?" : "&") + "kb=" + encodeURIComponent(currentKb);
    return ui.api(path, options).catch(function (error) {
      if (error.status === 401) logout("令牌已失效或被更换，请重新输入。");
      throw error;
    });
  }

  // ------------------------------------------------------------------ index + reload
  function refreshIndex() {
    return call("/admin/index").then(renderIndex).then(loadFaqs)
      .catch(function () { /* the page keeps the last known state */ });
  }

  // Every FAQ of the live index, so "归入 FAQ ▾ → 其他 FAQ" can offer all of them, not only the ones seen so far.
  function loadFaqs() {
    return call("/admin/faqs").then(function (body) {
      body.faqs.forEach(function (f) { knownFaqs[f.faq_id] = f.question; });
      refreshFaqList();
    });
  }

  // With several KBs: a picker of the ones this token may see; switching reloads every section for that KB.
  function kbPicker(info) {
    var kbs = info.kbs || [];
    if (kbs.length < 2) return null;
    var select = h("select", { id: "kb-picker", "aria-label": "知识库" },
      kbs.map(function (name) { return h("option", { value: name, selected: name === info.kb ? "" : null }, [name]); }));
    select.addEventListener("change", function () {
      currentKb = select.value;
      loaded = { lint: false, stats: false };
      knownFaqs = {};
      refreshIndex();
      loadMisses();
    });
    return h("div", { class: "fact" }, [h("span", { class: "fact-label" }, ["知识库"]), h("span", { class: "fact-value" }, [select])]);
  }

  function renderIndex(info) {
    currentKb = info.kb || currentKb;
    $("version-pill").textContent = info.version ? "索引 " + shortVersion(info.version) : "索引未加载";
    $("version-pill").title = info.version || "";
    var kbState;
    if (info.kb_problems) kbState = h("span", { class: "tag tag-bad" }, [info.kb_problems + " 处错误"]);
    else if (info.kb_changed) kbState = h("span", { class: "tag tag-warn" }, ["有修改未加载"]);
    else kbState = h("span", { class: "tag tag-ok" }, ["已是最新"]);
    var last = info.rebuild && info.rebuild.last;
    var facts = [
      fact("当前索引", info.version || "未加载", info.version ? "构建于 " + formatTime(info.built_at) : "", "index-version"),
      fact("FAQ / 问法", info.faqs === null ? "—" : info.faqs + " 条 / " + info.vectors + " 句"),
      answerLineFact(info),
      fact("编码器", info.encoder ? info.encoder.name : "—", info.encoder ? info.encoder.fingerprint : ""),
      h("div", { class: "fact" }, [h("span", { class: "fact-label" }, ["知识库"]), h("span", { class: "fact-value" }, [kbState])]),
    ];
    var picker = kbPicker(info);
    if (picker) facts.unshift(picker);
    if (last) {
      facts.push(fact("上次重建", rebuildStatusText(last.status) + " · " + formatTime(last.finished_at), last.message));
    }
    $("index-facts").replaceChildren.apply($("index-facts"), facts);
    if (info.load_error) showReloadResult("error", "索引加载失败：" + info.load_error, []);
    $("reload-button").disabled = Boolean(info.rebuild && info.rebuild.running);
  }

  // The line the bot answers at: a confidence when the encoder's model decides, else the cosine threshold.
  function answerLineFact(info) {
    if (typeof info.min_confidence === "number") {
      return fact("作答线", "置信度 ≥ " + String(Math.round(info.min_confidence * 10) / 10),
        "置信度：回答正确的实测概率（0–100）。" + (info.calibration_source || ""), "answer-line");
    }
    return fact("作答阈值", info.threshold === null ? "—" : "余弦 " + info.threshold.toFixed(2), info.calibration_source,
      "answer-line");
  }

  function fact(label, value, title, id) {
    return h("div", { class: "fact", title: title || null }, [
      h("span", { class: "fact-label" }, [label]),
      h("span", { class: "fact-value num", id: id || null }, [value]),
    ]);
  }

  $("reload-button").addEventListener("click", function () { reload(false); });

  function reload(force) {
    var button = $("reload-button");
    button.disabled = true;
    button.replaceChildren(h("span", { class: "spinner" }), "正在重建索引…");
    call("/admin/reload", { body: { force: force }, timeout: 600000 })
      .then(function (outcome) {
        showOutcome(outcome);
        loadMisses();
      })
      .catch(function (error) {
        if (error.details && error.details.status) showOutcome(error.details);
        else showReloadResult("error", ui.politeError(error), []);
      })
      .finally(function () {
        button.replaceChildren("重新加载知识库");
        button.disabled = false;
        refreshIndex();
      });
  }

  // Show what a rebuild did: published / unchanged / invalid KB (with file:line) / golden gate failed.
  function showOutcome(outcome) {
    if (!outcome) return;
    if (outcome.status === "published") {
      showReloadResult("ok", "新索引已生效：" + shortVersion(outcome.version) + "（用时 " + outcome.seconds + " 秒）", []);
    } else if (outcome.status === "unchanged") {
      showReloadResult("info", "知识库没有变化，继续使用索引 " + shortVersion(outcome.version) + "。", []);
    } else if (outcome.status === "invalid_kb") {
      showReloadResult("error", "知识库有错误，没有发布新索引，线上仍在使用 " + shortVersion(outcome.version) + "：",
        (outcome.problems || []).map(function (p) {
          return [p.file ? p.file + (p.line ? ":" + p.line : "") : "", p.field ? "字段 " + p.field : "", p.message]
            .filter(Boolean).join(" · ");
        }));
    } else if (outcome.status === "gate_failed") {
      var gate = outcome.gate || {};
      var lines = (gate.broke || []).map(function (c) {
        return "“" + c.query + "” 应答 " + c.expected + "，新索引答成 " + (c.got || "不知道");
      });
      showReloadResult("error", "黄金问题集准确率会下降（" + gate.live_accuracy + " → " + gate.new_accuracy +
        "），没有发布新索引。", lines, h("button", { class: "btn btn-sm btn-danger", type: "button",
          onclick: function () { reload(true); } }, ["仍然发布"]));
    } else {
      showReloadResult("error", outcome.message || "重建没有完成。", []);
    }
  }

  function showReloadResult(kind, message, lines, action) {
    var box = $("reload-result");
    box.hidden = false;
    box.className = "reload-result alert alert-" + (kind === "ok" ? "ok" : kind === "info" ? "info" : "error");
    var children = [h("div", { class: "reload-message" }, [message])];
    if (lines.length) children.push(h("ul", { class: "problem-list" }, lines.map(function (line) { return h("li", {}, [line]); })));
    if (action) children.push(action);
    box.replaceChildren(h("div", { class: "reload-body" }, children),
      h("button", { class: "btn btn-ghost btn-sm", type: "button", "aria-label": "关闭提示",
        onclick: function () { box.hidden = true; } }, ["×"]));
  }

  // ------------------------------------------------------------------ tabs
  document.querySelectorAll("[data-tab]").forEach(function (tab) {
    tab.addEventListener("click", function () { showTab(tab.getAttribute("data-tab")); });
  });

  function showTab(name) {
    document.querySelectorAll("[data-tab]").forEach(function (tab) {
      tab.setAttribute("aria-selected", tab.getAttribute("data-tab") === name ? "true" : "false");
    });
    ["misses", "lint", "stats"].forEach(function (panel) { $("panel-" + panel).hidden = panel !== name; });
    if (name === "lint" && !loaded.lint) loadLint();
    if (name === "stats" && !loaded.stats) loadStats();
  }

  // ------------------------------------------------------------------ misses
  document.querySelectorAll("[data-status]").forEach(function (tab) {
    tab.addEventListener("click", function () {
      missStatus = tab.getAttribute("data-status");
      document.querySelectorAll("[data-status]").forEach(function (other) {
        other.setAttribute("aria-selected", other === tab ? "true" : "false");
      });
      loadMisses();
    });
  });
  $("misses-refresh").addEventListener("click", function () { loadMisses(); });
  $("export-button").addEventListener("click", exportMisses);
  document.addEventListener("click", function (event) {
    document.querySelectorAll(".menu.is-open").forEach(function (menu) {
      if (!menu.contains(event.target)) closeMenu(menu);
    });
  });
  document.addEventListener("keydown", function (event) {
    if (event.key === "Escape") document.querySelectorAll(".menu.is-open").forEach(closeMenu);
  });

  function loadMisses() {
    var list = $("misses-list");
    if (!list.children.length) list.replaceChildren(loadingBlock("正在加载未命中问题…"));
    return call("/admin/misses?limit=200&status=" + encodeURIComponent(missStatus))
      .then(function (result) {
        $("misses-summary").textContent = result.total_misses
          ? "共 " + result.total_misses + " 条提问，归为 " + result.total_clusters + " 组（按出现次数排序）" : "";
        if (missStatus === "open") $("misses-count").textContent = result.total_clusters ? String(result.total_clusters) : "";
        result.clusters.forEach(function (c) {
          c.candidates.forEach(function (cand) { knownFaqs[cand.faq_id] = cand.question; });
        });
        refreshFaqList();
        if (!result.clusters.length) {
          list.replaceChildren(h("div", { class: "card empty" }, [
            h("div", { class: "empty-title" }, [missStatus === "open" ? "没有待处理的问题" : "这里还是空的"]),
            h("div", { class: "hint" }, [missStatus === "open" ? "机器人答不上来或被点“没帮助”的提问会出现在这里。" : ""]),
          ]));
          return;
        }
        list.replaceChildren.apply(list, result.clusters.map(renderCluster));
      })
      .catch(function (error) {
        list.replaceChildren(h("div", { class: "alert alert-error" }, [ui.politeError(error)]));
      });
  }

  function renderCluster(cluster) {
    var card = h("article", { class: "card miss", "data-miss-id": cluster.id });
    var others = cluster.variants.filter(function (v) { return v.text !== cluster.representative; });
    var head = h("div", { class: "miss-head" }, [
      h("div", { class: "miss-text" }, [cluster.representative]),
      h("span", { class: "miss-count num", title: "被问到的次数" }, [cluster.count + " 次"]),
    ]);
    var meta = h("div", { class: "miss-meta" }, [
      "最近 " + formatTime(cluster.last_seen),
      cluster.first_seen !== cluster.last_seen ? " · 最早 " + formatTime(cluster.first_seen) : "",
      " · " + Object.keys(cluster.channels).map(function (ch) { return ch + " " + cluster.channels[ch]; }).join("，"),
    ]);
    card.appendChild(head);
    card.appendChild(meta);
    if (others.length) {
      card.appendChild(h("div", { class: "miss-variants" }, [h("span", { class: "hint" }, ["也有人问："])].concat(
        others.slice(0, 6).map(function (v) {
          return h("span", { class: "variant" }, [v.text + (v.count > 1 ? "（" + v.count + "）" : "")]);
        }),
        others.length > 6 ? [h("span", { class: "hint" }, ["等 " + others.length + " 种问法"])] : [])));
    }
    if (cluster.candidates.length) {
      card.appendChild(h("div", { class: "miss-candidates" }, [h("span", { class: "hint" }, ["最接近的 FAQ："])].concat(
        cluster.candidates.map(function (c) {
          return h("span", { class: "candidate", title: c.faq_id }, [
            h("span", {}, [c.question]), h("b", { class: "num" }, [ui.formatPercent(c.percent)]),
          ]);
        }))));
    }
    if (cluster.answered_now) {
      card.appendChild(h("div", { class: "miss-note" }, ["当前索引会用「" + (knownFaqs[cluster.answered_now] || cluster.answered_now) +
        "」回答这个问题；如果答得对，可以忽略。"]));
    }
    var actions = h("div", { class: "miss-actions" });
    if (missStatus === "open") {
      actions.appendChild(attachMenu(cluster, card));
      actions.appendChild(h("button", { class: "btn btn-sm", type: "button", onclick: function () { openNewFaqForm(cluster, card); } },
        ["＋ 新建 FAQ"]));
      actions.appendChild(h("button", { class: "btn btn-sm btn-ghost", type: "button",
        onclick: function () { resolveCluster(cluster, card, { action: "ignore" }); } }, ["忽略"]));
    } else {
      var statusText = missStatus === "ignored" ? "已忽略" : "已处理";
      actions.appendChild(h("span", { class: "tag" }, [statusText]));
      actions.appendChild(h("button", { class: "btn btn-sm", type: "button",
        onclick: function () { resolveCluster(cluster, card, { action: "reopen" }); } }, ["重新打开"]));
    }
    card.appendChild(actions);
    card.appendChild(h("div", { class: "miss-status", role: "status" }));
    return card;
  }

  function attachMenu(cluster, card) {
    var menu = h("div", { class: "menu" });
    var toggle = h("button", { class: "btn btn-sm btn-primary", type: "button", "aria-haspopup": "menu", "aria-expanded": "false" },
      ["归入 FAQ ▾"]);
    var items = cluster.candidates.map(function (c) {
      return h("button", { class: "menu-item", type: "button", role: "menuitem", "data-faq-id": c.faq_id,
        onclick: function () {
          closeMenu(menu);
          resolveCluster(cluster, card, { action: "attach", faq_id: c.faq_id }, c.question);
        } }, [h("span", { class: "menu-item-text" }, [c.question]), h("span", { class: "menu-item-meta num" }, [c.faq_id + " · " + ui.formatPercent(c.percent, 0)])]);
    });
    var otherInput = h("input", { class: "field field-sm", list: "faq-ids", placeholder: "输入 FAQ ID", "aria-label": "其他 FAQ 的 ID",
      spellcheck: "false" });
    var otherForm = h("form", { class: "menu-other" }, [
      otherInput, h("button", { class: "btn btn-sm", type: "submit" }, ["归入"]),
    ]);
    otherForm.addEventListener("submit", function (event) {
      event.preventDefault();
      var faqId = otherInput.value.trim();
      if (!faqId) return;
      closeMenu(menu);
      resolveCluster(cluster, card, { action: "attach", faq_id: faqId }, knownFaqs[faqId] || faqId);
    });
    var panel = h("div", { class: "menu-panel", role: "menu" }, items.concat([
      h("div", { class: "menu-label" }, ["其他 FAQ"]), otherForm,
    ]));
    toggle.addEventListener("click", function (event) {
      event.stopPropagation();
      var open = !menu.classList.contains("is-open");
      document.querySelectorAll(".menu.is-open").forEach(closeMenu);
      if (open) {
        menu.classList.add("is-open");
        toggle.setAttribute("aria-expanded", "true");
        var first = panel.querySelector(".menu-item");
        if (first) first.focus();
      }
    });
    menu.appendChild(toggle);
    menu.appendChild(panel);
    return menu;
  }

  function closeMenu(menu) {
    menu.classList.remove("is-open");
    var toggle = menu.querySelector("[aria-expanded]");
    if (toggle) toggle.setAttribute("aria-expanded", "false");
  }

  function openNewFaqForm(cluster, card) {
    if (card.querySelector(".new-faq")) return;
    var suggestedId = "faq_" + cluster.id;
    var idField = h("input", { class: "field", name: "faq_id", value: suggestedId, pattern: "[A-Za-z0-9_.\\-]{1,64}", required: true,
      spellcheck: "false" });
    var questionField = h("input", { class: "field", name: "question", required: true, maxlength: "500" });
    questionField.value = cluster.representative;
    var answerField = h("textarea", { class: "field", name: "answer", rows: "4", required: true, maxlength: "20000",
      placeholder: "给客户的回答，支持多行和简单 Markdown（- 列表、**加粗**）" });
    var tagsField = h("input", { class: "field", name: "tags", placeholder: "可选，用逗号分隔，例如：payment, aftersales" });
    var form = h("form", { class: "new-faq" }, [
      h("div", { class: "new-faq-grid" }, [
        h("label", {}, [h("span", { class: "label" }, ["FAQ ID"]), idField]),
        h("label", {}, [h("span", { class: "label" }, ["标签"]), tagsField]),
      ]),
      h("label", {}, [h("span", { class: "label" }, ["标准问题"]), questionField]),
      h("label", {}, [h("span", { class: "label" }, ["答案"]), answerField]),
      h("div", { class: "hint" }, ["这一组的 " + cluster.variants.length + " 种问法会一起作为相似问法写入知识库，并重建索引。"]),
      h("div", { class: "new-faq-actions" }, [
        h("button", { class: "btn btn-primary btn-sm", type: "submit" }, ["保存并上线"]),
        h("button", { class: "btn btn-sm btn-ghost", type: "button", onclick: function () { form.remove(); } }, ["取消"]),
      ]),
    ]);
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      var tags = tagsField.value.split(/[,，\s]+/).map(function (t) { return t.trim(); }).filter(Boolean);
      resolveCluster(cluster, card, { action: "new", faq_id: idField.value.trim(), question: questionField.value.trim(),
        answer: answerField.value, tags: tags }, questionField.value.trim());
    });
    card.insertBefore(form, card.querySelector(".miss-status"));
    answerField.focus();
  }

  function resolveCluster(cluster, card, body, faqQuestion) {
    body.miss_ids = cluster.miss_ids;
    var status = card.querySelector(".miss-status");
    card.classList.add("is-busy");
    card.querySelectorAll("button, input, textarea").forEach(function (el) { el.disabled = true; });
    var working = { attach: "正在归入并重建索引…", new: "正在新建 FAQ 并重建索引…", ignore: "正在忽略…", reopen: "正在重新打开…" };
    status.className = "miss-status";
    status.replaceChildren(h("span", { class: "spinner" }), " " + working[body.action]);
    call("/admin/misses/" + cluster.id + "/resolve", { body: body, timeout: 600000 })
      .then(function (result) {
        var done = {
          attach: "已归入「" + (faqQuestion || body.faq_id) + "」",
          new: "已新建 FAQ「" + (faqQuestion || body.faq_id) + "」",
          ignore: "已忽略",
          reopen: "已重新打开",
        }[body.action];
        var reloadInfo = result.reload;
        if (reloadInfo && reloadInfo.status === "published") done += "，新索引 " + shortVersion(reloadInfo.version) + " 已生效";
        if (reloadInfo && !reloadInfo.ok) showOutcome(reloadInfo);
        card.classList.remove("is-busy");
        card.classList.add("is-done");
        status.className = "miss-status is-ok";
        status.replaceChildren("✓ " + done);
        toast(done, body.action === "ignore" ? { label: "撤销", run: function () {
          call("/admin/misses/" + cluster.id + "/resolve", { body: { action: "reopen", miss_ids: cluster.miss_ids } })
            .then(function () { toast("已撤销"); loadMisses(); })
            .catch(function (error) { toast(ui.politeError(error)); });
        } } : null);
        setTimeout(function () {
          card.classList.add("is-leaving");
          setTimeout(function () {
            card.remove();
            if (!$("misses-list").children.length) loadMisses();
          }, 250);
        }, 1400);
        if (body.action === "attach" || body.action === "new") {
          if (faqQuestion) knownFaqs[body.faq_id] = faqQuestion;
          refreshIndex();
          loaded.lint = false;
          loaded.stats = false;
        }
        if (missStatus === "open") {
          var count = Number($("misses-count").textContent || "0");
          $("misses-count").textContent = count > 1 ? String(count - 1) : "";
        }
      })
      .catch(function (error) {
        card.classList.remove("is-busy");
        card.querySelectorAll("button, input, textarea").forEach(function (el) { el.disabled = false; });
        status.className = "miss-status is-error";
        var message = ui.politeError(error);
        if (error.details && Array.isArray(error.details)) {
          message += " " + error.details.map(function (p) { return p.message || ""; }).join("；");
        }
        status.replaceChildren(message);
      });
  }

  function exportMisses() {
    var button = $("export-button");
    button.disabled = true;
    fetch("/admin/misses/export?format=csv&kind=clusters&status=" + encodeURIComponent(missStatus), {
      headers: { Authorization: "Bearer " + token }, cache: "no-store",
    })
      .then(function (response) {
        if (response.status === 401) { logout("令牌已失效或被更换，请重新输入。"); throw new Error("unauthorized"); }
        if (!response.ok) throw new Error("HTTP " + response.status);
        return response.blob();
      })
      .then(function (blob) {
        var link = h("a", { href: URL.createObjectURL(blob), download: "faqbot-misses-" + missStatus + ".csv" });
        document.body.appendChild(link);
        link.click();
        setTimeout(function () { URL.revokeObjectURL(link.href); link.remove(); }, 1000);
      })
      .catch(function (error) { if (token) toast("导出失败：" + error.message); })
      .finally(function () { button.disabled = false; });
  }

  function refreshFaqList() {
    var list = $("faq-ids");
    list.replaceChildren.apply(list, Object.keys(knownFaqs).sort().map(function (id) {
      return h("option", { value: id }, [knownFaqs[id] || id]);
    }));
  }

  // ------------------------------------------------------------------ lint
  $("lint-refresh").addEventListener("click", loadLint);

  function loadLint() {
    loaded.lint = true;
    var body = $("lint-body");
    body.replaceChildren(loadingBlock("正在检查知识库…"));
    call("/admin/lint", { timeout: 300000 })
      .then(function (report) {
        var total = report.counts.duplicates + report.counts.confusable + report.counts.misplaced;
        $("lint-count").textContent = total ? String(total) : "";
        $("lint-summary").textContent = report.faqs + " 条 FAQ、" + report.texts + " 个问法；“容易混淆”指相似度 ≥ " +
          ui.formatPercent(report.min_percent) + "（余弦 " + report.min_similarity.toFixed(3) + "）";
        if (report.ok) {
          body.replaceChildren(h("div", { class: "card empty" }, [
            h("div", { class: "empty-title" }, ["知识库很健康"]),
            h("div", { class: "hint" }, ["没有重复、容易混淆或放错位置的问法。"]),
          ]));
          return;
        }
        var sections = [];
        if (report.duplicates.length) {
          sections.push(lintSection("重复的问法", "同一句话出现在多处，只保留一处即可。", ["问法", "出现位置"],
            report.duplicates.map(function (d) {
              return [d.text, d.occurrences.map(function (o) { return o.faq_id + "（" + where(o) + "）"; }).join("；")];
            })));
        }
        if (report.confusable.length) {
          sections.push(lintSection("容易混淆的 FAQ", "两条 FAQ 的问法过于接近，客户可能得到另一条的答案或被追问“您是想问…”。",
            ["FAQ A", "FAQ B", "相似度"],
            report.confusable.map(function (c) {
              knownFaqs[c.faq_a] = knownFaqs[c.faq_a] || "";
              knownFaqs[c.faq_b] = knownFaqs[c.faq_b] || "";
              return [c.faq_a + "：" + c.text_a, c.faq_b + "：" + c.text_b, ui.formatPercent(c.percent)];
            })));
        }
        if (report.misplaced.length) {
          sections.push(lintSection("可能放错位置的问法", "这个问法离另一条 FAQ 比离自己所在的 FAQ 更近。",
            ["问法（所在 FAQ）", "更接近", "相似度对比"],
            report.misplaced.map(function (m) {
              return [m.text + "（" + m.faq_id + "，" + where(m) + "）", m.closer.faq_id + "：" + m.closer.text,
                ui.formatPercent(m.closer.percent) + " vs 本 FAQ " + ui.formatPercent(m.own.percent)];
            })));
        }
        body.replaceChildren.apply(body, sections);
      })
      .catch(function (error) {
        loaded.lint = false;
        var lines = Array.isArray(error.details) ? error.details.map(function (p) {
          return (p.file || "") + (p.line ? ":" + p.line : "") + " " + (p.message || "");
        }) : [];
        body.replaceChildren(h("div", { class: "alert alert-error" }, [
          h("div", {}, [ui.politeError(error)]),
          lines.length ? h("ul", { class: "problem-list" }, lines.map(function (l) { return h("li", {}, [l]); })) : null,
        ]));
      });
  }

  var LINT_ROWS_SHOWN = 15;

  function lintSection(title, help, headers, rows) {
    var row = function (cells) { return h("tr", {}, cells.map(function (cell) { return h("td", {}, [cell]); })); };
    var body = h("tbody", {}, rows.slice(0, LINT_ROWS_SHOWN).map(row));
    var section = h("section", { class: "card lint-section" }, [
      h("h3", { class: "card-title" }, [title, h("small", {}, [rows.length + " 处"])]),
      h("p", { class: "hint lint-help" }, [help]),
      h("table", { class: "table" }, [
        h("thead", {}, [h("tr", {}, headers.map(function (t) { return h("th", {}, [t]); }))]),
        body,
      ]),
    ]);
    if (rows.length > LINT_ROWS_SHOWN) {
      var more = h("button", { class: "btn btn-sm lint-more", type: "button", onclick: function () {
        rows.slice(LINT_ROWS_SHOWN).forEach(function (cells) { body.appendChild(row(cells)); });
        more.remove();
      } }, ["展开其余 " + (rows.length - LINT_ROWS_SHOWN) + " 处"]);
      section.appendChild(more);
    }
    return section;
  }

  function where(item) {
    var file = String(item.file || "").split(/[\\/]/).pop();
    return file + (item.line ? ":" + item.line : "");
  }

  // ------------------------------------------------------------------ stats
  $("stats-refresh").addEventListener("click", loadStats);
  document.querySelectorAll("[data-days]").forEach(function (tab) {
    tab.addEventListener("click", function () {
      statsDays = Number(tab.getAttribute("data-days"));
      document.querySelectorAll("[data-days]").forEach(function (other) {
        other.setAttribute("aria-selected", other === tab ? "true" : "false");
      });
      loadStats();
    });
  });

  function loadStats() {
    loaded.stats = true;
    var body = $("stats-body");
    if (!body.children.length) body.replaceChildren(loadingBlock("正在统计…"));
    call("/admin/stats?days=" + statsDays + "&tz=" + encodeURIComponent(TIME_ZONE))
      .then(function (stats) {
        var t = stats.totals;
        stats.top_faqs.forEach(function (f) { if (f.question) knownFaqs[f.faq_id] = f.question; });
        refreshFaqList();
        $("stats-summary").textContent = "时区 " + stats.tz;
        var kpis = h("div", { class: "kpis" }, [
          kpi("提问数", String(t.questions), "近 " + statsDays + " 天"),
          kpi("作答率", t.answer_rate === null ? "—" : ui.formatPercent(t.answer_rate * 100), "机器人直接回答的比例", "kpi-rate"),
          kpi("未命中", String(t.misses), "待处理 " + stats.miss_status.open + " 条"),
          kpi("有帮助 / 没帮助", t.thumbs_up + " / " + t.thumbs_down, "客户对答案的评价"),
        ]);
        var chart = h("section", { class: "card chart-card" }, [
          h("h3", { class: "card-title" }, ["每日提问与作答率", h("span", { class: "legend" }, [
            h("i", { class: "swatch swatch-answered" }), "已作答", h("i", { class: "swatch swatch-missed" }), "未命中",
            h("i", { class: "swatch swatch-rate" }), "作答率",
          ])]),
          dailyChart(stats.days, Math.max(320, body.clientWidth - 46)),
        ]);
        var tables = h("div", { class: "stats-tables" }, [
          statsTable("最常命中的 FAQ", ["FAQ", "次数"], stats.top_faqs.map(function (f) {
            return [f.question || f.faq_id, String(f.count)];
          }), "还没有命中记录"),
          statsTable("高频未命中", ["提问", "次数"], stats.top_misses.map(function (m) {
            return [m.representative, String(m.count)];
          }), "没有待处理的未命中"),
          statsTable("被点“没帮助”最多", ["FAQ", "没帮助 / 有帮助"], stats.thumbs_down.map(function (f) {
            return [f.question || f.faq_id || "（无）", f.thumbs_down + " / " + f.thumbs_up];
          }), "还没有差评"),
        ]);
        body.replaceChildren(kpis, chart, tables);
      })
      .catch(function (error) {
        loaded.stats = false;
        body.replaceChildren(h("div", { class: "alert alert-error" }, [ui.politeError(error)]));
      });
  }

  function kpi(label, value, note, id) {
    return h("div", { class: "card kpi" }, [
      h("div", { class: "kpi-label" }, [label]),
      h("div", { class: "kpi-value num", id: id || null }, [value]),
      h("div", { class: "hint" }, [note]),
    ]);
  }

  function statsTable(title, headers, rows, empty) {
    return h("section", { class: "card" }, [
      h("h3", { class: "card-title" }, [title]),
      rows.length ? h("table", { class: "table" }, [
        h("thead", {}, [h("tr", {}, headers.map(function (t, i) { return h("th", { class: i ? "num right" : null }, [t]); }))]),
        h("tbody", {}, rows.map(function (cells) {
          return h("tr", {}, cells.map(function (c, i) { return h("td", { class: i ? "num right" : null }, [c]); }));
        })),
      ]) : h("div", { class: "empty" }, [empty]),
    ]);
  }

  // Stacked bars (answered + missed questions per day) and the answer-rate line on a 0-100% axis.
  function dailyChart(days, width) {
    var W = width, H = 240, left = 40, right = 46, top = 16, bottom = 30;
    var plotW = W - left - right, plotH = H - top - bottom;
    var maxQ = Math.max.apply(null, days.map(function (d) { return d.questions; }).concat([1]));
    var step = niceStep(maxQ);
    var yMax = Math.ceil(maxQ / step) * step;
    var svg = ui.svg("svg", { viewBox: "0 0 " + W + " " + H, width: W, height: H, class: "chart", role: "img", "aria-label": "每日提问数与作答率" });
    for (var v = 0; v <= yMax; v += step) {
      var y = top + plotH - (v / yMax) * plotH;
      svg.appendChild(ui.svg("line", { x1: left, x2: W - right, y1: y, y2: y, class: "grid" }));
      svg.appendChild(svgText(left - 8, y + 4, String(v), "end", "axis"));
    }
    [0, 50, 100].forEach(function (p) {
      svg.appendChild(svgText(W - right + 8, top + plotH - (p / 100) * plotH + 4, p + "%", "start", "axis axis-rate"));
    });
    var slot = plotW / days.length;
    var barW = Math.min(28, slot * 0.6);
    var labelEvery = Math.ceil(days.length / 10);
    var points = [];
    days.forEach(function (d, i) {
      var x = left + slot * i + (slot - barW) / 2;
      var answeredH = (d.answered / yMax) * plotH;
      var missedH = (d.misses / yMax) * plotH;
      var base = top + plotH;
      var group = ui.svg("g", { class: "day" });
      var title = ui.svg("title", {});
      title.textContent = d.date + "：提问 " + d.questions + "，已作答 " + d.answered + "，未命中 " + d.misses +
        (d.answer_rate === null ? "" : "，作答率 " + ui.formatPercent(d.answer_rate * 100));
      group.appendChild(title);
      if (d.answered) group.appendChild(ui.svg("rect", { x: x, y: base - answeredH, width: barW, height: answeredH, class: "bar-answered", rx: 2 }));
      if (d.misses) group.appendChild(ui.svg("rect", { x: x, y: base - answeredH - missedH, width: barW, height: missedH, class: "bar-missed", rx: 2 }));
      svg.appendChild(group);
      if ((days.length - 1 - i) % labelEvery === 0) svg.appendChild(svgText(x + barW / 2, H - 10, d.date.slice(5), "middle", "axis"));
      if (d.answer_rate !== null) points.push([x + barW / 2, top + plotH - d.answer_rate * plotH]);
    });
    if (points.length > 1) {
      svg.appendChild(ui.svg("polyline", { points: points.map(function (p) { return p[0].toFixed(1) + "," + p[1].toFixed(1); }).join(" "),
        class: "rate-line" }));
    }
    points.forEach(function (p) { svg.appendChild(ui.svg("circle", { cx: p[0], cy: p[1], r: 3.5, class: "rate-dot" })); });
    return svg;
  }

  function niceStep(max) {
    var raw = max / 4;
    var magnitude = Math.pow(10, Math.floor(Math.log10(Math.max(raw, 1))));
    var nice = [1, 2, 5, 10].map(function (m) { return m * magnitude; }).find(function (s) { return s >= raw; });
    return Math.max(1, nice);
  }

  function svgText(x, y, value, anchor, cls) {
    var node = ui.svg("text", { x: x, y: y, "text-anchor": anchor, class: cls });
    node.textContent = value;
    return node;
  }

  // ------------------------------------------------------------------ helpers
  function loadingBlock(message) {
    return h("div", { class: "card empty" }, [h("span", { class: "spinner" }), " " + message]);
  }

  function showAlert(id, message) {
    $(id).hidden = !message;
    $(id).textContent = message || "";
  }

  function toast(message, action) {
    var old = document.querySelector(".toast");
    if (old) old.remove();
    clearTimeout(toastTimer);
    var node = h("div", { class: "toast", role: "status" }, [message]);
    if (action) {
      node.appendChild(h("button", { class: "toast-action", type: "button", onclick: function () { node.remove(); action.run(); } },
        [action.label]));
    }
    document.body.appendChild(node);
    toastTimer = setTimeout(function () { node.remove(); }, 5000);
  }

  function shortVersion(version) {
    if (!version) return "—";
    // versions start with their UTC build time (20261125T024845428Z-…): show it in the admin's time zone
    var match = /^(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})/.exec(version);
    if (!match) return version;
    return formatTime(match[1] + "-" + match[2] + "-" + match[3] + "T" + match[4] + ":" + match[5] + ":" + match[6] + "Z");
  }

  function formatTime(iso) {
    if (!iso) return "—";
    var date = new Date(/[zZ]|[+-]\d\d:?\d\d$/.test(iso) ? iso : iso + "Z");
    if (isNaN(date.getTime())) return iso;
    var pad = function (n) { return (n < 10 ? "0" : "") + n; };
    return pad(date.getMonth() + 1) + "-" + pad(date.getDate()) + " " + pad(date.getHours()) + ":" + pad(date.getMinutes());
  }

  function rebuildStatusText(status) {
    return { published: "已发布", unchanged: "无变化", invalid_kb: "知识库有错", gate_failed: "未通过黄金集", busy: "忙" }[status] || status;
  }
})();
