// The copy button next to a new key's secret (shown once).
(function () {
  "use strict";
  const button = document.getElementById("copy");
  if (!button) return;
  button.addEventListener("click", async () => {
    const input = document.getElementById(button.dataset.target);
    try {
      await navigator.clipboard.writeText(input.value);
    } catch (err) {
      // Clipboard API needs a secure context; plain-HTTP deployments fall back to a selection.
      input.select();
      document.execCommand("copy");
    }
    button.textContent = "Copied";
  });
})();
