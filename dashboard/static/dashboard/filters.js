// The usage page's filters: picking a range, a model or a key shows it at once (no inline
// handlers: the console's Content-Security-Policy allows only these files' scripts).
"use strict";

for (const control of document.querySelectorAll("[data-submits]")) {
  control.addEventListener("change", () => control.form.submit());
}
