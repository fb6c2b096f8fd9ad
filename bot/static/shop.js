// Demo shop page: show the real embed line for this server, and the admin link when the admin page is on.
(function () {
  "use strict";
  var code = document.querySelector("[data-embed-code]");
  if (code) {
    code.textContent = '<script src="' + new URL("/widget.js", location.href).href +
      '" data-title="在线客服" defer></' + "script>";
  }
  fetch("/widget-config.json").then(function (r) { return r.ok ? r.json() : null; }).then(function (config) {
    var link = document.querySelector("[data-admin-link]");
    if (link && config && config.admin_enabled) link.hidden = false;
  }).catch(function () { /* the demo links are optional */ });
})();
