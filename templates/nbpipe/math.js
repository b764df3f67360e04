// Maths without MathJax (which would load from the network): the TeX source
// stays as written, marked so the stylesheet sets it apart from the prose.
(function () {
  var pattern = /\$\$[\s\S]+?\$\$|\\\[[\s\S]+?\\\]|\\\([\s\S]+?\\\)|\$[^$\n]+?\$/g;
  var skip = {CODE: 1, PRE: 1, SCRIPT: 1, STYLE: 1, TEXTAREA: 1};
  function mark(node) {
    var text = node.nodeValue, last = 0, found = false, parts = document.createDocumentFragment();
    text.replace(pattern, function (tex, at) {
      found = true;
      parts.appendChild(document.createTextNode(text.slice(last, at)));
      var span = document.createElement("span");
      span.className = tex.charAt(1) === "$" || tex.charAt(1) === "[" ? "nbpipe-math nbpipe-math-display" : "nbpipe-math";
      span.textContent = tex;
      parts.appendChild(span);
      last = at + tex.length;
    });
    if (!found) return;
    parts.appendChild(document.createTextNode(text.slice(last)));
    node.parentNode.replaceChild(parts, node);
  }
  document.querySelectorAll(".jp-RenderedMarkdown").forEach(function (root) {
    var walker = document.createTreeWalker(root, NodeFilter.SHOW_TEXT, {
      acceptNode: function (n) {
        for (var p = n.parentNode; p && p !== root; p = p.parentNode) {
          if (skip[p.nodeName] || (p.classList && p.classList.contains("nbpipe-math"))) return NodeFilter.FILTER_REJECT;
        }
        return NodeFilter.FILTER_ACCEPT;
      }
    });
    var nodes = [];
    while (walker.nextNode()) nodes.push(walker.currentNode);
    nodes.forEach(mark);
  });
})();
