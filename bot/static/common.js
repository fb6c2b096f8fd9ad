// Shared helpers of faqbot's own pages (gauge, admin): DOM building without HTML parsing, JSON fetch,
// polite Chinese error messages. One namespace, FaqbotUI; the embeddable widget does not use this file.
(function () {
  "use strict";

  function h(tag, attributes, children) {
    var element = document.createElement(tag);
    Object.keys(attributes || {}).forEach(function (name) {
      var value = attributes[name];
      if (value === false || value === null || value === undefined) return;
      if (name.slice(0, 2) === "on" && typeof value === "function") element.addEventListener(name.slice(2), value);
      else element.setAttribute(name, value === true ? "" : String(value));
    });
    (children || []).forEach(function (child) {
      if (child === null || child === undefined || child === false) return;
      element.appendChild(typeof child === "object" ? child : document.createTextNode(String(child)));
    });
    return element;
  }

  function svg(tag, attributes) {
    var element = document.createElementNS("http://www.w3.org/2000/svg", tag);
    Object.keys(attributes || {}).forEach(function (name) { element.setAttribute(name, String(attributes[name])); });
    return element;
  }

  function ApiError(kind, status, code, message, details) {
    this.kind = kind;
    this.status = status;
    this.code = code;
    this.message = message;
    this.details = details === undefined ? null : details;
  }

  // fetch JSON; rejects with an ApiError {kind: network|timeout|http, status, code, message}
  function api(path, options) {
    options = options || {};
    var controller = new AbortController();
    var timer = setTimeout(function () { controller.abort(); }, options.timeout || 30000);
    var headers = { Accept: "application/json" };
    if (options.body !== undefined) headers["Content-Type"] = "application/json";
    if (options.token) headers.Authorization = "Bearer " + options.token;
    return fetch(path, {
      method: options.method || (options.body !== undefined ? "POST" : "GET"),
      headers: headers,
      body: options.body !== undefined ? JSON.stringify(options.body) : undefined,
      signal: controller.signal,
      cache: "no-store",
    }).then(function (response) {
      return response.json().catch(function () { return null; }).then(function (data) {
        if (!response.ok) {
          var error = data && data.error ? data.error : {};
          throw new ApiError("http", response.status, error.code || null, error.message || response.statusText,
            error.details);
        }
        return data;
      });
    }, function (error) {
      throw new ApiError(error && error.name === "AbortError" ? "timeout" : "network", 0, null, String(error));
    }).finally(function () { clearTimeout(timer); });
  }

  function politeError(error) {
    if (!(error instanceof ApiError)) return "出了点问题：" + String(error && error.message || error);
    if (error.kind === "network") return "网络连接失败，请检查网络或服务是否在运行。";
    if (error.kind === "timeout") return "服务响应超时，请稍后重试。";
    if (error.status === 503) return "模型和索引正在加载，请稍等几秒再试。";
    if (error.status === 401 || error.status === 403) return "管理令牌不正确或已失效，请重新输入。";
    if (error.code === "empty_message") return "请输入完整的句子（不能只有空格或符号）。";
    if (error.code === "message_too_long") return "句子太长了：" + error.message;
    if (error.status === 404) return "没有找到：" + (error.message || "该资源不存在");
    if (error.status === 422 || error.status === 400) return "输入有误：" + error.message;
    return "服务出错了（" + error.status + "）：" + (error.message || "请稍后重试");
  }

  function formatPercent(value, digits) {
    if (typeof value !== "number" || !isFinite(value)) return "—";
    return value.toFixed(digits === undefined ? 1 : digits) + "%";
  }

  function loadConfig() {
    return api("/widget-config.json").catch(function () { return {}; });
  }

  // Header nav: reveal the admin link when the admin page is on; mark the current page.
  function initNav(config) {
    var adminLink = document.querySelector("[data-admin-link]");
    if (adminLink && config && config.admin_enabled) adminLink.hidden = false;
  }

  window.FaqbotUI = { h: h, svg: svg, api: api, ApiError: ApiError, politeError: politeError,
    formatPercent: formatPercent, loadConfig: loadConfig, initNav: initNav };
})();
