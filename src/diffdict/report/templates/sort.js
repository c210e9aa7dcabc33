(function () {
  var table = document.getElementById('features');
  if (!table) return;
  var body = table.tBodies[0];
  var headers = table.tHead.rows[0].cells;
  function value(row, i, numeric) {
    var raw = row.cells[i].getAttribute('data-sort');
    if (numeric) { var v = parseFloat(raw); return isNaN(v) ? -Infinity : v; }
    return (raw || '').toLowerCase();
  }
  Array.prototype.forEach.call(headers, function (th, i) {
    th.addEventListener('click', function () {
      var numeric = th.getAttribute('data-type') === 'num';
      var asc = th.getAttribute('aria-sort') !== 'ascending';
      Array.prototype.forEach.call(headers, function (h) { h.removeAttribute('aria-sort'); });
      th.setAttribute('aria-sort', asc ? 'ascending' : 'descending');
      var rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {
        var x = value(a, i, numeric), y = value(b, i, numeric);
        if (x < y) return asc ? -1 : 1;
        if (x > y) return asc ? 1 : -1;
        return 0;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
  var filter = document.getElementById('filter');
  var count = document.getElementById('shown');
  function apply() {
    var q = filter.value.trim().toLowerCase(), shown = 0;
    Array.prototype.forEach.call(body.rows, function (r) {
      var ok = !q || r.textContent.toLowerCase().indexOf(q) !== -1;
      r.style.display = ok ? '' : 'none';
      if (ok) shown++;
    });
    count.textContent = String(shown);
  }
  filter.addEventListener('input', apply);
  apply();
})();
