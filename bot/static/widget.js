/*
 * faqbot chat widget — put one line on any page:
 *
 *   <script src="https://bot.example.com/widget.js" data-title="在线客服" defer></script>
 *
 * Optional attributes: data-title, data-greeting, data-color (#1677ff), data-position (right|left),
 * data-open (true), data-suggestions ("怎么退货|多久发货"; without it the server's GET /suggestions fills in),
 * data-tags ("billing,shipping"),
 * data-channel (web), data-api (API base; default: where this script was loaded from),
 * data-kb (which knowledge base of a deployment serving several; default: its first).
 *
 * Everything lives in one shadow root (the host page's CSS cannot reach in, ours cannot leak out),
 * inside one closure (no globals). Every text from the customer or the server is set with
 * textContent / createTextNode, never parsed as HTML.
 */
(function () {
  "use strict";

  var script = document.currentScript || findOwnScript();
  if (!script || document.querySelector("[data-faqbot-widget]")) return; // loaded twice: keep the first

  var attr = function (name) {
    var value = script.getAttribute("data-" + name);
    return value === null ? null : value.trim();
  };
  var apiBase = new URL(attr("api") || "./", script.src || location.href).href;
  var kb = /^[a-z0-9_-]{1,32}$/.test(attr("kb") || "") ? attr("kb") : null;
  var storageKey = "faqbot-widget:" + apiBase + (kb ? "#" + kb : ""); // one conversation per KB
  var options = {
    title: attr("title"),
    greeting: attr("greeting"),
    color: attr("color"),
    position: attr("position") === "left" ? "left" : "right",
    startOpen: attr("open") === "true",
    suggestions: (attr("suggestions") || "").split("|").map(trim).filter(Boolean).slice(0, 6),
    tags: (attr("tags") || "").split(",").map(trim).filter(Boolean),
    channel: /^[A-Za-z0-9_.-]{1,32}$/.test(attr("channel") || "") ? attr("channel") : "web",
  };
  var config = {
    title: "在线客服",
    greeting: "您好，我是智能客服，请问有什么可以帮您？",
    handoff_url: null,
    handoff_text: "转人工客服",
    max_message_chars: 1000,
  };
  var ICONS = {
    chat: "M4 5.5A2.5 2.5 0 0 1 6.5 3h11A2.5 2.5 0 0 1 20 5.5v8a2.5 2.5 0 0 1-2.5 2.5H10l-4.2 3.4A.5.5 0 0 1 5 19v-3h0A2.5 2.5 0 0 1 4 13.5z M8 8.5h8 M8 11.5h5",
    down: "M6 9l6 6 6-6",
    close: "M6 6l12 12 M18 6L6 18",
    send: "M4 12l16-8-6 16-2.5-6.5z M11.5 13.5L20 4",
    bot: "M12 3v3 M6.5 7h11A2.5 2.5 0 0 1 20 9.5v7a2.5 2.5 0 0 1-2.5 2.5h-11A2.5 2.5 0 0 1 4 16.5v-7A2.5 2.5 0 0 1 6.5 7z M9 12.5v1 M15 12.5v1 M9.5 16h5",
    up: "M7 10v11 M15 5.9L14 10h5.8a2 2 0 0 1 1.9 2.6l-2.3 8a2 2 0 0 1-1.9 1.4H4a2 2 0 0 1-2-2v-8a2 2 0 0 1 2-2h2.8a2 2 0 0 0 1.8-1.1L12 2a3.1 3.1 0 0 1 3 3.9z",
    downvote: "M17 14V3 M9 18.1L10 14H4.2a2 2 0 0 1-1.9-2.6l2.3-8A2 2 0 0 1 6.5 2H20a2 2 0 0 1 2 2v8a2 2 0 0 1-2 2h-2.8a2 2 0 0 0-1.8 1.1L12 22a3.1 3.1 0 0 1-3-3.9z",
    agent: "M4 13v-1a8 8 0 0 1 16 0v1 M4 13h3v5H5.5A1.5 1.5 0 0 1 4 16.5z M20 13h-3v5h1.5a1.5 1.5 0 0 0 1.5-1.5z M17 18c0 1.5-2 2.5-5 2.5",
  };
  var REQUEST_TIMEOUT_MS = 15000;
  var HISTORY_LIMIT = 120;

  var state = loadState();
  var busy = false;
  var composing = false;

  // ---------------------------------------------------------------- DOM
  var host = document.createElement("div");
  host.setAttribute("data-faqbot-widget", "");
  host.id = "faqbot-widget";
  var shadow = host.attachShadow({ mode: "open" });
  var style = document.createElement("style");
  style.textContent = widgetCss();
  shadow.appendChild(style);

  var titleText = h("span", { class: "fbw-title" });
  var launcherLabel = h("span", { class: "fbw-launcher-label" });
  var launcher = h("button", { class: "fbw-launcher", type: "button", "aria-expanded": "false" }, [
    h("span", { class: "fbw-launcher-icon fbw-icon-chat" }, [icon("chat")]),
    h("span", { class: "fbw-launcher-icon fbw-icon-close" }, [icon("down")]),
    launcherLabel,
  ]);
  var closeButton = h("button", { class: "fbw-close", type: "button", "aria-label": "关闭对话" }, [icon("close")]);
  var log = h("div", { class: "fbw-log", role: "log", "aria-live": "polite" });
  var textarea = h("textarea", {
    class: "fbw-input",
    rows: "1",
    placeholder: "请输入您的问题…",
    "aria-label": "输入您的问题",
    enterkeyhint: "send",
  });
  var sendButton = h("button", { class: "fbw-send", type: "submit", "aria-label": "发送" }, [icon("send")]);
  var composer = h("form", { class: "fbw-composer" }, [textarea, sendButton]);
  var counter = h("span", { class: "fbw-counter" });
  var panel = h("section", { class: "fbw-panel", role: "dialog", "aria-hidden": "true" }, [
    h("header", { class: "fbw-head" }, [
      h("span", { class: "fbw-avatar" }, [icon("bot")]),
      h("span", { class: "fbw-head-text" }, [
        titleText,
        h("span", { class: "fbw-status" }, [h("i", { class: "fbw-dot" }), text("智能客服 · 在线")]),
      ]),
      closeButton,
    ]),
    log,
    composer,
    h("div", { class: "fbw-foot" }, [h("span", { class: "fbw-keys" }, [text("Enter 发送 · Shift+Enter 换行")]), counter]),
  ]);
  var root = h("div", { class: "fbw-root fbw-" + options.position }, [panel, launcher]);
  if (options.color && window.CSS && CSS.supports("color", options.color)) {
    root.style.setProperty("--fbw-brand", options.color);
  }
  shadow.appendChild(root);

  function mount() {
    document.body.appendChild(host);
    applyTitle();
    renderHistory();
    setOpen(state.open || options.startOpen, false);
    fetchJson("widget-config.json", null)
      .then(function (serverConfig) {
        Object.keys(config).forEach(function (key) {
          if (serverConfig[key] !== undefined && serverConfig[key] !== null) config[key] = serverConfig[key];
        });
        applyTitle();
        if (!state.messages.length) renderHistory();
      })
      .catch(function () { /* defaults are fine; the first question will report a real network error */ });
    // 猜你想问: the page's own data-suggestions win; else the server's (the week's most asked, or the KB's first).
    if (!options.suggestions.length) {
      fetchJson("suggestions?limit=6" + (kb ? "&kb=" + encodeURIComponent(kb) : ""), null)
        .then(function (reply) {
          var questions = ((reply && reply.suggestions) || []).map(function (s) { return String(s.question || ""); })
            .filter(Boolean).slice(0, 6);
          if (!questions.length || options.suggestions.length) return;
          options.suggestions = questions;
          if (!state.messages.length) renderHistory();
        })
        .catch(function () { /* no suggestions: the greeting alone is fine */ });
    }
  }
  if (document.body) mount();
  else document.addEventListener("DOMContentLoaded", mount);

  // ---------------------------------------------------------------- events
  launcher.addEventListener("click", function () { setOpen(!state.open, true); });
  closeButton.addEventListener("click", function () { setOpen(false, true); launcher.focus(); });
  panel.addEventListener("keydown", function (event) {
    if (event.key === "Escape") { setOpen(false, true); launcher.focus(); }
  });
  composer.addEventListener("submit", function (event) {
    event.preventDefault();
    sendFromInput();
  });
  // Chinese/Japanese IMEs use Enter to pick the candidate: while composing, Enter belongs to the IME.
  // Chrome marks that keydown isComposing; Safari fires compositionend first but keeps keyCode 229.
  textarea.addEventListener("compositionstart", function () { composing = true; });
  textarea.addEventListener("compositionend", function () { composing = false; });
  textarea.addEventListener("keydown", function (event) {
    if (event.key !== "Enter" || event.shiftKey) return;
    if (event.isComposing || composing || event.keyCode === 229) return;
    event.preventDefault();
    sendFromInput();
  });
  textarea.addEventListener("input", function () {
    autosize();
    updateCounter();
  });

  // ---------------------------------------------------------------- behaviour
  function setOpen(open, remember) {
    state.open = open;
    root.classList.toggle("fbw-is-open", open);
    panel.setAttribute("aria-hidden", open ? "false" : "true");
    launcher.setAttribute("aria-expanded", open ? "true" : "false");
    launcher.setAttribute("aria-label", open ? "收起在线客服" : "打开" + currentTitle());
    if (remember) saveState();
    if (open) {
      scrollToEnd();
      setTimeout(function () { textarea.focus({ preventScroll: true }); }, 60);
    }
  }

  function sendFromInput() {
    var message = textarea.value;
    if (!message.trim() || busy) return;
    if (message.length > config.max_message_chars) {
      addAndRender({ role: "notice", text: "消息太长了，请精简到 " + config.max_message_chars + " 字以内。" });
      return;
    }
    textarea.value = "";
    autosize();
    updateCounter();
    ask(message);
  }

  function ask(message) {
    var suggestions = log.querySelector(".fbw-suggestions");
    if (suggestions) suggestions.remove();
    addAndRender({ role: "user", text: message });
    var typing = typingBubble();
    log.appendChild(typing);
    scrollToEnd();
    setBusy(true);
    var body = { message: message, session_id: state.sessionId, channel: options.channel };
    if (kb) body.kb = kb;
    if (options.tags.length) body.tags = options.tags;
    fetchJson("chat", body)
      .then(function (reply) {
        typing.remove();
        addAndRender(botEntry(message, reply));
      })
      .catch(function (error) {
        typing.remove();
        addAndRender({ role: "notice", text: politeError(error), retry: error.retryable ? message : null });
      })
      .then(function () {
        setBusy(false);
        textarea.focus({ preventScroll: true });
      });
  }

  function botEntry(message, reply) {
    var entry = { role: "bot", ask: message, text: String(reply.answer || "") };
    if (reply.matched) {
      entry.kind = "answer";
      entry.faq_id = reply.faq_id;
      entry.question = reply.question;
      entry.percent = reply.percent;
      if (typeof reply.confidence === "number") entry.confidence = reply.confidence;
      if (Array.isArray(reply.related) && reply.related.length) {
        entry.related = reply.related.slice(0, 5).map(function (r) { return { question: String(r.question || "") }; })
          .filter(function (r) { return r.question; });
        entry.related_source = reply.related_source || null;
      }
    } else if (reply.clarify && reply.clarify.length) {
      entry.kind = "clarify";
      entry.text = entry.text.split("\n")[0];
      entry.choices = reply.clarify.map(function (c) { return { question: c.question }; });
    } else {
      entry.kind = "fallback";
      entry.handoff_url = reply.handoff_url || config.handoff_url || null;
    }
    if (reply.handoff === true) {
      entry.handoff = reply.handoff_reason || "asked";
      entry.handoff_url = reply.handoff_url || config.handoff_url || null;
    }
    return entry;
  }

  function sendFeedback(entry, helpful, row) {
    var buttons = row.querySelectorAll("button");
    buttons.forEach(function (b) { b.disabled = true; });
    var body = { message: entry.ask, faq_id: entry.faq_id || null, helpful: helpful,
      session_id: state.sessionId, channel: options.channel };
    if (kb) body.kb = kb;
    fetchJson("feedback", body)
      .then(function () {
        entry.feedback = helpful ? "up" : "down";
        saveState();
        row.replaceWith(feedbackRow(entry));
      })
      .catch(function () {
        buttons.forEach(function (b) { b.disabled = false; });
        var note = row.querySelector(".fbw-feedback-note");
        note.textContent = "提交失败，请稍后再试";
        note.classList.add("fbw-error-text");
      });
  }

  function setBusy(value) {
    busy = value;
    sendButton.disabled = value;
    root.classList.toggle("fbw-is-busy", value);
  }

  function addAndRender(entry) {
    state.messages.push(entry);
    if (state.messages.length > HISTORY_LIMIT) state.messages = state.messages.slice(-HISTORY_LIMIT);
    saveState();
    log.appendChild(renderEntry(entry));
    scrollToEnd();
  }

  function renderHistory() {
    log.textContent = "";
    log.appendChild(renderEntry({ role: "bot", kind: "greeting", text: options.greeting || config.greeting }));
    if (!state.messages.length && options.suggestions.length) log.appendChild(suggestionChips());
    state.messages.forEach(function (entry) { log.appendChild(renderEntry(entry)); });
    scrollToEnd();
  }

  // ---------------------------------------------------------------- rendering (text only, never HTML)
  function renderEntry(entry) {
    if (entry.role === "user") {
      return h("div", { class: "fbw-row fbw-row-user" }, [h("div", { class: "fbw-bubble fbw-user" }, [text(entry.text)])]);
    }
    if (entry.role === "notice") {
      var notice = h("div", { class: "fbw-notice", role: "alert" }, [text(entry.text)]);
      if (entry.retry) {
        var again = h("button", { class: "fbw-link-button", type: "button" }, [text("重试")]);
        again.addEventListener("click", function () {
          if (busy) return;
          removeEntry(entry);
          notice.parentNode.remove();
          removeLastUser(entry.retry);
          ask(entry.retry);
        });
        notice.appendChild(again);
      }
      return h("div", { class: "fbw-row fbw-row-notice" }, [notice]);
    }
    var bubble = h("div", { class: "fbw-bubble fbw-bot" });
    appendRichText(bubble, entry.text);
    if (entry.kind === "answer") {
      bubble.appendChild(h("div", { class: "fbw-match" }, [
        h("span", { class: "fbw-match-question" }, [text("匹配问题：" + entry.question)]),
        scoreBadge(entry),
      ]));
      if (entry.related && entry.related.length) bubble.appendChild(relatedChips(entry));
      bubble.appendChild(feedbackRow(entry));
    } else if (entry.kind === "clarify") {
      var choices = h("div", { class: "fbw-choices" });
      (entry.choices || []).forEach(function (choice) {
        // No percent here: a pair similarity beside each choice reads as "how right", which it is not.
        var button = h("button", { class: "fbw-choice", type: "button" }, [
          h("span", { class: "fbw-choice-text" }, [text(choice.question)]),
        ]);
        button.addEventListener("click", function () { if (!busy) ask(choice.question); });
        choices.appendChild(button);
      });
      bubble.appendChild(choices);
    }
    if (entry.handoff || (entry.kind === "fallback" && safeUrl(entry.handoff_url))) {
      bubble.appendChild(handoffButton(entry));
    }
    return h("div", { class: "fbw-row fbw-row-bot" }, [h("span", { class: "fbw-mini-avatar" }, [icon("bot")]), bubble]);
  }

  // The way to a person: the configured link, or (none set) a button that tells the host page, which
  // may open its own live chat on the `faqbot:handoff` event.
  function handoffButton(entry) {
    var label = [icon("agent"), text(config.handoff_text || "转人工客服")];
    var url = safeUrl(entry.handoff_url);
    if (url) {
      return h("a", { class: "fbw-handoff", href: url, target: "_blank", rel: "noopener noreferrer",
        "data-reason": entry.handoff || "fallback" }, label);
    }
    var button = h("button", { class: "fbw-handoff", type: "button", "data-reason": entry.handoff || "fallback" }, label);
    button.addEventListener("click", function () {
      document.dispatchEvent(new CustomEvent("faqbot:handoff", { detail: {
        session_id: state.sessionId, reason: entry.handoff || "fallback", message: entry.ask || null } }));
    });
    return button;
  }

  function feedbackRow(entry) {
    if (entry.feedback) {
      return h("div", { class: "fbw-feedback fbw-feedback-done" }, [
        text(entry.feedback === "up" ? "感谢您的反馈！" : "已记录，我们会尽快改进这个回答"),
      ]);
    }
    var note = h("span", { class: "fbw-feedback-note" }, [text("这个回答有帮助吗？")]);
    var up = h("button", { class: "fbw-thumb", type: "button", "aria-label": "有帮助", "data-helpful": "true" }, [icon("up")]);
    var down = h("button", { class: "fbw-thumb", type: "button", "aria-label": "没帮助", "data-helpful": "false" }, [icon("downvote")]);
    var row = h("div", { class: "fbw-feedback" }, [note, up, down]);
    up.addEventListener("click", function () { sendFeedback(entry, true, row); });
    down.addEventListener("click", function () { sendFeedback(entry, false, row); });
    return row;
  }

  // Questions related to the answer (the FAQ's own list, or its nearest FAQs): a click asks it.
  function relatedChips(entry) {
    var wrap = h("div", { class: "fbw-related", "data-source": entry.related_source || "" }, [
      h("div", { class: "fbw-related-title" }, [text("相关问题")]),
    ]);
    entry.related.forEach(function (related) {
      var chip = h("button", { class: "fbw-chip", type: "button" }, [text(related.question)]);
      chip.addEventListener("click", function () { if (!busy) ask(related.question); });
      wrap.appendChild(chip);
    });
    return wrap;
  }

  function suggestionChips() {
    var wrap = h("div", { class: "fbw-suggestions" }, [h("div", { class: "fbw-suggestions-title" }, [text("猜你想问")])]);
    options.suggestions.forEach(function (question) {
      var chip = h("button", { class: "fbw-chip", type: "button" }, [text(question)]);
      chip.addEventListener("click", function () { if (!busy) ask(question); });
      wrap.appendChild(chip);
    });
    return wrap;
  }

  function typingBubble() {
    return h("div", { class: "fbw-row fbw-row-bot fbw-typing-row" }, [
      h("span", { class: "fbw-mini-avatar" }, [icon("bot")]),
      h("div", { class: "fbw-bubble fbw-bot fbw-typing", "aria-label": "正在输入" }, [
        h("i"), h("i"), h("i"),
      ]),
    ]);
  }

  // A tiny, safe subset of Markdown for FAQ answers: paragraphs, "- " / "1. " lists, **bold**, bare links.
  function appendRichText(parent, source) {
    var lines = String(source).replace(/\r\n?/g, "\n").trim().split("\n");
    var list = null;
    var paragraph = [];
    var flush = function () {
      if (paragraph.length) {
        var p = h("p", { class: "fbw-p" });
        paragraph.forEach(function (line, i) {
          if (i) p.appendChild(document.createElement("br"));
          appendInline(p, line);
        });
        parent.appendChild(p);
        paragraph = [];
      }
    };
    lines.forEach(function (line) {
      var bullet = /^\s*[-*•]\s+(.*)$/.exec(line);
      var numbered = /^\s*(\d+)[.)、]\s+(.*)$/.exec(line);
      if (bullet || numbered) {
        flush();
        var tag = bullet ? "ul" : "ol";
        if (!list || list.tagName.toLowerCase() !== tag) {
          list = h(tag, { class: "fbw-list" });
          parent.appendChild(list);
        }
        var item = h("li");
        appendInline(item, bullet ? bullet[1] : numbered[2]);
        list.appendChild(item);
      } else if (!line.trim()) {
        flush();
        list = null;
      } else {
        list = null;
        paragraph.push(line);
      }
    });
    flush();
  }

  function appendInline(parent, line) {
    var pattern = /\*\*([^*]+)\*\*|(https?:\/\/[^\s<>"'，。；）)]+)/g;
    var last = 0;
    var match;
    while ((match = pattern.exec(line))) {
      if (match.index > last) parent.appendChild(text(line.slice(last, match.index)));
      if (match[1]) {
        parent.appendChild(h("strong", {}, [text(match[1])]));
      } else {
        parent.appendChild(h("a", { href: match[2], target: "_blank", rel: "noopener noreferrer" }, [text(match[2])]));
      }
      last = pattern.lastIndex;
    }
    if (last < line.length) parent.appendChild(text(line.slice(last)));
  }

  // ---------------------------------------------------------------- network
  function fetchJson(path, body) {
    var controller = typeof AbortController === "function" ? new AbortController() : null;
    var timer = controller ? setTimeout(function () { controller.abort(); }, REQUEST_TIMEOUT_MS) : null;
    var init = { method: body ? "POST" : "GET", mode: "cors", credentials: "omit",
      headers: body ? { "Content-Type": "application/json" } : {}, signal: controller ? controller.signal : undefined };
    if (body) init.body = JSON.stringify(body);
    return fetch(new URL(path, apiBase).href, init)
      .then(function (response) {
        return response.json().catch(function () { return null; }).then(function (data) {
          if (!response.ok) throw httpError(response.status, data);
          return data;
        });
      }, function (error) {
        var failure = new Error(error && error.name === "AbortError" ? "timeout" : "network");
        failure.kind = failure.message;
        failure.retryable = true;
        throw failure;
      })
      .finally(function () { if (timer) clearTimeout(timer); });
  }

  function httpError(status, data) {
    var error = new Error("http " + status);
    error.kind = "http";
    error.status = status;
    error.code = data && data.error ? data.error.code : null;
    error.retryable = status >= 500 || status === 429;
    return error;
  }

  function politeError(error) {
    if (error.kind === "timeout") return "客服响应超时了，请稍后重试。";
    if (error.kind === "network") return "网络连接失败，请检查网络后重试。";
    if (error.status === 503) return "客服系统正在启动，请稍等几秒再试。";
    if (error.status === 429) return "您的提问太频繁了，请稍后再试。";
    if (error.code === "message_too_long") return "消息太长了，请精简到 " + config.max_message_chars + " 字以内。";
    if (error.code === "empty_message") return "请输入具体的问题内容。";
    return "服务暂时不可用（" + error.status + "），请稍后重试。";
  }

  // ---------------------------------------------------------------- small helpers
  function h(tag, attributes, children) {
    var element = document.createElement(tag);
    Object.keys(attributes || {}).forEach(function (name) { element.setAttribute(name, attributes[name]); });
    (children || []).forEach(function (child) { element.appendChild(child); });
    return element;
  }

  function text(value) { return document.createTextNode(value == null ? "" : String(value)); }

  function trim(value) { return value.trim(); }


  function icon(name) {
    var ns = "http://www.w3.org/2000/svg";
    var svg = document.createElementNS(ns, "svg");
    svg.setAttribute("viewBox", "0 0 24 24");
    svg.setAttribute("aria-hidden", "true");
    svg.setAttribute("class", "fbw-svg");
    var path = document.createElementNS(ns, "path");
    path.setAttribute("d", ICONS[name]);
    svg.appendChild(path);
    return svg;
  }

  // The answer's badge: the confidence (the measured chance that this answer is right) when the bot
  // decided by it; otherwise (an encoder without a confidence model, or a history entry saved before
  // there was one) the matched question's calibrated similarity.
  function scoreBadge(entry) {
    if (typeof entry.confidence === "number" && isFinite(entry.confidence)) {
      return h("span", { class: "fbw-percent fbw-confidence " + percentClass(entry.confidence),
        title: "置信度：这个回答正确的实测概率" }, [text("置信度 " + formatPercent(entry.confidence))]);
    }
    return h("span", { class: "fbw-percent " + percentClass(entry.percent), title: "语义相似度" },
      [text(formatPercent(entry.percent))]);
  }

  function formatPercent(value) {
    return typeof value === "number" && isFinite(value) ? Math.floor(value) + "%" : "—"; // never overstate a match
  }

  function percentClass(value) {
    return value >= 90 ? "fbw-high" : value >= 75 ? "fbw-mid" : "fbw-low";
  }

  function safeUrl(value) {
    if (!value) return null;
    try {
      var url = new URL(value, apiBase);
      return /^(https?|mailto|tel):$/.test(url.protocol) ? url.href : null;
    } catch (e) {
      return null;
    }
  }

  function currentTitle() { return options.title || config.title || "在线客服"; }

  function applyTitle() {
    titleText.textContent = currentTitle();
    launcherLabel.textContent = currentTitle();
    panel.setAttribute("aria-label", currentTitle());
    launcher.setAttribute("aria-label", state.open ? "收起在线客服" : "打开" + currentTitle());
  }

  function autosize() {
    textarea.style.height = "auto";
    textarea.style.height = Math.min(textarea.scrollHeight, 120) + "px";
  }

  function updateCounter() {
    var length = textarea.value.length;
    counter.textContent = length > config.max_message_chars * 0.8 ? length + " / " + config.max_message_chars : "";
    counter.classList.toggle("fbw-error-text", length > config.max_message_chars);
  }

  function scrollToEnd() {
    log.scrollTop = log.scrollHeight;
  }

  function removeEntry(entry) {
    var at = state.messages.indexOf(entry);
    if (at >= 0) state.messages.splice(at, 1);
  }

  function removeLastUser(message) {
    for (var i = state.messages.length - 1; i >= 0; i--) {
      if (state.messages[i].role === "user" && state.messages[i].text === message) {
        state.messages.splice(i, 1);
        break;
      }
    }
    saveState();
    var rows = log.querySelectorAll(".fbw-row-user");
    if (rows.length) rows[rows.length - 1].remove();
  }

  function newSessionId() {
    if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
    return "s-" + Date.now().toString(36) + "-" + Math.random().toString(36).slice(2, 12);
  }

  function loadState() {
    try {
      var saved = JSON.parse(sessionStorage.getItem(storageKey) || "null");
      if (saved && typeof saved.sessionId === "string" && Array.isArray(saved.messages)) return saved;
    } catch (e) { /* storage off or corrupt: start a fresh conversation */ }
    return { sessionId: newSessionId(), messages: [], open: false };
  }

  function saveState() {
    try {
      sessionStorage.setItem(storageKey, JSON.stringify(state));
    } catch (e) { /* private mode / quota: the conversation just won't survive a reload */ }
  }

  function findOwnScript() {
    var scripts = document.querySelectorAll("script[src]");
    for (var i = scripts.length - 1; i >= 0; i--) {
      if (/\/widget\.js(\?|#|$)/.test(scripts[i].src)) return scripts[i];
    }
    return null;
  }

  function widgetCss() {
    return [
      ":host{all:initial!important;}",
      ".fbw-root{--fbw-brand:#1677ff;--fbw-brand-dark:#0958d9;--fbw-brand-soft:#e9f2ff;--fbw-brand-line:#a8cbff;",
      "--fbw-text:#1f2329;--fbw-muted:#8a919f;",
      "--fbw-line:#e8eaef;position:fixed;bottom:24px;z-index:2147483000;",
      "font-family:-apple-system,BlinkMacSystemFont,\"PingFang SC\",\"Hiragino Sans GB\",\"Microsoft YaHei\",",
      "\"Noto Sans CJK SC\",\"Source Han Sans SC\",\"Helvetica Neue\",Arial,sans-serif;font-size:14px;",
      "line-height:1.6;color:var(--fbw-text);-webkit-font-smoothing:antialiased;text-align:left;letter-spacing:0;}",
      "@supports (color:color-mix(in srgb,red 50%,blue)){.fbw-root{",
      "--fbw-brand-dark:color-mix(in srgb,var(--fbw-brand) 82%,#000);",
      "--fbw-brand-soft:color-mix(in srgb,var(--fbw-brand) 10%,#fff);",
      "--fbw-brand-line:color-mix(in srgb,var(--fbw-brand) 38%,#fff);}}",
      ".fbw-right{right:24px;}.fbw-left{left:24px;}",
      ".fbw-root *,.fbw-root *::before,.fbw-root *::after{box-sizing:border-box;}",
      ".fbw-svg{width:20px;height:20px;fill:none;stroke:currentColor;stroke-width:1.8;stroke-linecap:round;",
      "stroke-linejoin:round;flex:none;}",
      "button{font:inherit;color:inherit;}",
      /* launcher */
      ".fbw-launcher{display:flex;align-items:center;gap:8px;height:52px;padding:0 20px 0 16px;border:0;",
      "border-radius:26px;background:var(--fbw-brand);color:#fff;cursor:pointer;font-size:15px;font-weight:500;",
      "box-shadow:0 6px 20px rgba(22,60,130,.28);transition:transform .15s ease,box-shadow .15s ease;margin-left:auto;}",
      ".fbw-left .fbw-launcher{margin-left:0;}",
      ".fbw-launcher:hover{transform:translateY(-1px);box-shadow:0 8px 24px rgba(22,60,130,.34);}",
      ".fbw-launcher:focus-visible,.fbw-root button:focus-visible{outline:2px solid ",
      "var(--fbw-brand);outline-offset:2px;}",
      ".fbw-launcher .fbw-svg{width:24px;height:24px;}",
      ".fbw-launcher-icon{display:flex;}.fbw-icon-close{display:none;}",
      ".fbw-is-open .fbw-icon-close{display:flex;}.fbw-is-open .fbw-icon-chat{display:none;}",
      ".fbw-is-open .fbw-launcher{width:52px;padding:0;justify-content:center;}",
      ".fbw-is-open .fbw-launcher-label{display:none;}",
      /* panel */
      ".fbw-panel{position:absolute;bottom:68px;width:380px;height:min(600px,calc(100vh - 120px));",
      "display:flex;flex-direction:column;background:#fff;border-radius:16px;overflow:hidden;",
      "box-shadow:0 12px 48px rgba(15,30,60,.18),0 2px 6px rgba(15,30,60,.08);opacity:0;visibility:hidden;",
      "transform:translateY(12px) scale(.98);transform-origin:bottom right;",
      "transition:opacity .18s ease,transform .18s ease,visibility 0s linear .18s;}",
      ".fbw-right .fbw-panel{right:0;}.fbw-left .fbw-panel{left:0;transform-origin:bottom left;}",
      ".fbw-is-open .fbw-panel{opacity:1;visibility:visible;transform:none;transition:opacity .18s ease,transform .18s ease;}",
      ".fbw-head{display:flex;align-items:center;gap:12px;padding:14px 12px 14px 16px;color:#fff;",
      "background:linear-gradient(135deg,var(--fbw-brand),var(--fbw-brand-dark));flex:none;}",
      ".fbw-avatar{display:flex;align-items:center;justify-content:center;width:38px;height:38px;border-radius:50%;",
      "background:rgba(255,255,255,.18);flex:none;}",
      ".fbw-avatar .fbw-svg{width:22px;height:22px;}",
      ".fbw-head-text{display:flex;flex-direction:column;min-width:0;flex:1;}",
      ".fbw-title{font-size:16px;font-weight:600;line-height:1.4;white-space:nowrap;overflow:hidden;text-overflow:ellipsis;}",
      ".fbw-status{display:flex;align-items:center;gap:6px;font-size:12px;opacity:.88;line-height:1.4;}",
      ".fbw-dot{display:inline-block;width:7px;height:7px;border-radius:50%;background:#52c41a;",
      "box-shadow:0 0 0 2px rgba(255,255,255,.35);}",
      ".fbw-close{display:flex;align-items:center;justify-content:center;width:34px;height:34px;border:0;",
      "border-radius:8px;background:transparent;color:#fff;cursor:pointer;flex:none;}",
      ".fbw-close:hover{background:rgba(255,255,255,.16);}",
      /* log */
      ".fbw-log{flex:1;overflow-y:auto;padding:16px 14px 8px;background:#f5f7fa;overscroll-behavior:contain;",
      "scroll-behavior:auto;}",
      ".fbw-row{display:flex;align-items:flex-start;gap:8px;margin:0 0 14px;}",
      ".fbw-row-user{justify-content:flex-end;}.fbw-row-notice{justify-content:center;}",
      ".fbw-mini-avatar{display:flex;align-items:center;justify-content:center;width:30px;height:30px;",
      "border-radius:50%;background:var(--fbw-brand-soft);color:var(--fbw-brand);flex:none;}",
      ".fbw-mini-avatar .fbw-svg{width:18px;height:18px;}",
      ".fbw-bubble{max-width:80%;padding:10px 13px;border-radius:14px;word-break:break-word;overflow-wrap:anywhere;}",
      ".fbw-user{background:var(--fbw-brand);color:#fff;border-top-right-radius:4px;white-space:pre-wrap;}",
      ".fbw-bot{background:#fff;border:1px solid var(--fbw-line);border-top-left-radius:4px;max-width:calc(100% - 46px);}",
      ".fbw-p{margin:0;}.fbw-p+.fbw-p,.fbw-list+.fbw-p,.fbw-p+.fbw-list{margin-top:6px;}",
      ".fbw-list{margin:4px 0 0;padding-left:20px;}.fbw-list li{margin:2px 0;}",
      ".fbw-bot a{color:var(--fbw-brand);text-decoration:none;}.fbw-bot a:hover{text-decoration:underline;}",
      ".fbw-bot strong{font-weight:600;}",
      ".fbw-match{display:flex;align-items:center;gap:8px;margin-top:10px;padding-top:8px;",
      "border-top:1px dashed var(--fbw-line);font-size:12px;color:var(--fbw-muted);}",
      ".fbw-match-question{flex:1;min-width:0;overflow:hidden;text-overflow:ellipsis;white-space:nowrap;}",
      ".fbw-percent{flex:none;padding:1px 8px;border-radius:10px;font-weight:600;font-variant-numeric:tabular-nums;}",
      ".fbw-high{background:#e8f7ee;color:#16894a;}.fbw-mid{background:#fff5e6;color:#c26a00;}",
      ".fbw-low{background:#f2f3f5;color:#646a73;}",
      ".fbw-feedback{display:flex;align-items:center;gap:4px;margin-top:6px;font-size:12px;color:var(--fbw-muted);}",
      ".fbw-feedback-note{flex:1;}",
      ".fbw-thumb{border:1px solid var(--fbw-line);background:#fff;border-radius:14px;height:26px;min-width:34px;",
      "padding:0 8px;cursor:pointer;display:inline-flex;align-items:center;justify-content:center;color:#646a73;}",
      ".fbw-thumb .fbw-svg{width:15px;height:15px;}",
      ".fbw-thumb:hover:not(:disabled){border-color:var(--fbw-brand);background:var(--fbw-brand-soft);color:var(--fbw-brand);}",
      ".fbw-thumb:disabled{opacity:.5;cursor:default;}",
      ".fbw-feedback-done{color:#16894a;}",
      ".fbw-choices{display:flex;flex-direction:column;gap:6px;margin-top:8px;}",
      ".fbw-choice{display:flex;align-items:center;gap:8px;width:100%;padding:8px 10px;border:1px solid var(--fbw-line);",
      "border-radius:10px;background:#fafbfc;cursor:pointer;text-align:left;}",
      ".fbw-choice:hover{border-color:var(--fbw-brand);background:var(--fbw-brand-soft);color:var(--fbw-brand);}",
      ".fbw-choice-text{flex:1;}",
      ".fbw-handoff{display:inline-flex;align-items:center;gap:6px;margin-top:10px;padding:6px 14px;border:0;cursor:pointer;",
      "border-radius:16px;background:var(--fbw-brand);color:#fff!important;font-size:13px;text-decoration:none!important;}",
      ".fbw-handoff .fbw-svg{width:16px;height:16px;}",
      ".fbw-handoff:hover{background:var(--fbw-brand-dark);}",
      ".fbw-notice{display:flex;align-items:center;gap:8px;max-width:90%;padding:6px 12px;border-radius:8px;",
      "background:#fff1f0;color:#cf1322;font-size:13px;}",
      ".fbw-link-button{border:0;background:none;padding:0;color:var(--fbw-brand);cursor:pointer;font-size:13px;",
      "font-weight:500;white-space:nowrap;}",
      ".fbw-suggestions{margin:-4px 0 14px 38px;display:flex;flex-wrap:wrap;gap:6px;}",
      ".fbw-suggestions-title,.fbw-related-title{width:100%;font-size:12px;color:var(--fbw-muted);}",
      ".fbw-related{display:flex;flex-wrap:wrap;gap:6px;margin-top:8px;}",
      ".fbw-chip{border:1px solid var(--fbw-brand-line);background:#fff;color:var(--fbw-brand);",
      "border-radius:14px;padding:3px 12px;cursor:pointer;font-size:13px;}",
      ".fbw-chip:hover{background:var(--fbw-brand-soft);}",
      ".fbw-typing{display:flex;gap:4px;align-items:center;height:42px;}",
      ".fbw-typing i{width:7px;height:7px;border-radius:50%;background:#b8bec9;animation:fbw-blink 1.2s infinite ease-in-out;}",
      ".fbw-typing i:nth-child(2){animation-delay:.15s;}.fbw-typing i:nth-child(3){animation-delay:.3s;}",
      "@keyframes fbw-blink{0%,80%,100%{opacity:.3;transform:translateY(0);}40%{opacity:1;transform:translateY(-3px);}}",
      /* composer */
      ".fbw-composer{display:flex;align-items:flex-end;gap:8px;padding:10px 12px 6px;border-top:1px solid var(--fbw-line);",
      "background:#fff;flex:none;}",
      ".fbw-input{flex:1;min-height:40px;max-height:120px;resize:none;border:1px solid var(--fbw-line);",
      "border-radius:10px;padding:9px 12px;font:inherit;line-height:1.5;color:inherit;background:#fafbfc;outline:none;",
      "transition:border-color .15s,background .15s;}",
      ".fbw-input:focus{border-color:var(--fbw-brand);background:#fff;box-shadow:0 0 0 3px var(--fbw-brand-soft);}",
      ".fbw-input::placeholder{color:#b0b6c0;}",
      ".fbw-send{display:flex;align-items:center;justify-content:center;width:40px;height:40px;border:0;",
      "border-radius:10px;background:var(--fbw-brand);color:#fff;cursor:pointer;flex:none;}",
      ".fbw-send:hover:not(:disabled){background:var(--fbw-brand-dark);}",
      ".fbw-send:disabled{opacity:.45;cursor:default;}",
      ".fbw-foot{display:flex;justify-content:space-between;padding:0 14px 8px;font-size:11px;color:#b0b6c0;",
      "background:#fff;flex:none;}",
      ".fbw-error-text{color:#cf1322!important;}",
      /* phones: the panel takes the whole screen, the launcher becomes a round button */
      "@media (max-width:480px){.fbw-root{bottom:16px;}.fbw-right{right:16px;}.fbw-left{left:16px;}",
      ".fbw-launcher{width:56px;height:56px;padding:0;justify-content:center;border-radius:50%;}",
      ".fbw-launcher-label{display:none;}",
      ".fbw-panel{position:fixed;inset:0;width:auto;height:auto;border-radius:0;bottom:0;}",
      ".fbw-is-open .fbw-launcher{display:none;}.fbw-bubble{max-width:86%;}.fbw-keys{visibility:hidden;}",
      ".fbw-input{font-size:16px;}}", // 16px stops iOS zooming into the field
      "@media (prefers-reduced-motion:reduce){.fbw-panel,.fbw-launcher{transition:none;}.fbw-typing i{animation:none;}}",
    ].join("");
  }
})();
