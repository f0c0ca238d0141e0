/* xfdiff dashboard: the module table.
 *
 * A small virtualised table for Dash (``window.xfdiff_dashboard.ModuleTable``,
 * Python side ``xfdiff.dashboard.layout.ModuleTable``). Only the rows in view
 * (and a few either side) are in the DOM, so a report with thousands of calls
 * draws as fast as one with fifty.
 *
 * Props: rows (list of dicts, one per aligned call), columns ({field, header,
 * kind: "int" | "sci" | "status" | "text", width | flex + min_width, tooltip,
 * header_tooltip}), row_key (the rows' id field), selected (a row id),
 * scroll_to ({rowId}: bring that row to the middle), sort_by ({field, dir}),
 * row_height, status_colors ({status: css colour}), style, className.
 * Set by the table: cell_clicked ({rowId, colId, value, timestamp}) on a click
 * or an arrow key, selected, sort_by (a click on a header).
 */
(function () {
  "use strict";
  const NS = (window.xfdiff_dashboard = window.xfdiff_dashboard || {});
  const BUFFER = 6; // rows rendered above and below the visible ones

  function sci(v) {
    if (v === null || v === undefined) return "—";
    return v === 0 ? "0" : Number(v).toExponential(2);
  }

  function text(col, v) {
    if (col.kind === "sci") return sci(v);
    return v === null || v === undefined ? "—" : String(v);
  }

  function missing(v) {
    return v === null || v === undefined || v === "—";
  }

  function sortRows(rows, sortBy) {
    if (!sortBy || !sortBy.field) return rows;
    const f = sortBy.field;
    const dir = sortBy.dir === "desc" ? -1 : 1;
    const idx = rows.map(function (_, i) { return i; });
    idx.sort(function (i, j) {
      const a = rows[i][f], b = rows[j][f];
      const am = missing(a), bm = missing(b);
      if (am || bm) return am === bm ? i - j : (am ? 1 : -1); // missing values last either way
      let c;
      if (typeof a === "number" && typeof b === "number") c = a - b;
      else c = String(a).localeCompare(String(b), undefined, { numeric: true });
      return dir * c || i - j;
    });
    return idx.map(function (i) { return rows[i]; });
  }

  function cellStyle(col) {
    return col.flex
      ? { flex: col.flex + " 1 " + (col.min_width || 100) + "px", minWidth: (col.min_width || 100) + "px" }
      : { flex: "0 0 " + col.width + "px", width: col.width + "px" };
  }

  function ModuleTable(props) {
    const React = window.React;
    const h = React.createElement;
    const rows = props.rows || [];
    const columns = props.columns || [];
    const rowKey = props.row_key || "rid";
    const rowH = props.row_height || 30;
    const colors = props.status_colors || {};
    const setProps = props.setProps || function () {};
    const api = window.dash_component_api;
    const loading = api && api.useDashContext ? api.useDashContext().useLoading() : false;

    const wrap = React.useRef(null); // the scrolling body (the header stays outside it)
    const head = React.useRef(null);
    const applied = React.useRef(null); // the scroll_to request already carried out
    const [scrollTop, setScrollTop] = React.useState(0);
    const [viewH, setViewH] = React.useState(600);
    const [scrollbar, setScrollbar] = React.useState(0); // width of the body's vertical scroll bar
    const ordered = React.useMemo(function () { return sortRows(rows, props.sort_by); }, [rows, props.sort_by]);

    const minWidth = columns.reduce(function (s, c) { return s + (c.flex ? (c.min_width || 100) : c.width); }, 0);

    function indexOf(id) {
      if (id === null || id === undefined) return -1;
      const key = String(id);
      for (let i = 0; i < ordered.length; i++) if (String(ordered[i][rowKey]) === key) return i;
      return -1;
    }

    // Measure the viewport and follow scroll_to before the browser paints, so the
    // first frame already shows the requested row.
    React.useLayoutEffect(function () {
      const el = wrap.current;
      if (!el) return;
      const height = el.clientHeight;
      if (height !== viewH) setViewH(height);
      const bar = el.offsetWidth - el.clientWidth;
      if (bar !== scrollbar) setScrollbar(bar);
      if (el.scrollTop !== scrollTop) setScrollTop(el.scrollTop); // fewer rows can pull the box back up
      const req = props.scroll_to;
      if (req && req !== applied.current) {
        applied.current = req;
        const i = indexOf(req.rowId);
        if (i >= 0) {
          el.scrollTop = Math.max(0, i * rowH - (height - rowH) / 2);
          setScrollTop(el.scrollTop);
        }
      }
    });

    React.useEffect(function () {
      const el = wrap.current;
      if (!el || typeof ResizeObserver === "undefined") return undefined;
      const ro = new ResizeObserver(function () {
        setViewH(el.clientHeight);
        setScrollbar(el.offsetWidth - el.clientWidth);
      });
      ro.observe(el);
      return function () { ro.disconnect(); };
    }, []);

    function select(row, colId) {
      const id = row[rowKey];
      setProps({
        selected: id,
        cell_clicked: { rowId: id, colId: colId, value: row[colId], timestamp: Date.now() },
      });
    }

    function keepVisible(i) {
      const el = wrap.current;
      if (!el) return;
      const top = i * rowH, body = el.clientHeight;
      if (top < el.scrollTop) el.scrollTop = top;
      else if (top + rowH > el.scrollTop + body) el.scrollTop = top + rowH - body;
    }

    function onKeyDown(e) {
      if (e.key !== "ArrowDown" && e.key !== "ArrowUp") return;
      if (!ordered.length) return;
      e.preventDefault();
      const cur = indexOf(props.selected);
      const next = cur < 0 ? 0 : Math.min(ordered.length - 1, Math.max(0, cur + (e.key === "ArrowDown" ? 1 : -1)));
      if (next === cur) return;
      keepVisible(next);
      select(ordered[next], "layer");
    }

    function onHeader(col) {
      const cur = props.sort_by;
      let dir;
      if (cur && cur.field === col.field) dir = cur.dir === "desc" ? "asc" : "desc";
      else dir = col.kind === "sci" ? "desc" : "asc"; // errors: largest first
      setProps({ sort_by: { field: col.field, dir: dir } });
    }

    const header = h("div", { className: "xf-mt-head", ref: head },
      h("div", { className: "xf-mt-hrow", role: "row", style: { minWidth: minWidth + scrollbar + "px", paddingRight: scrollbar + "px" } },
      columns.map(function (col) {
        const sorted = props.sort_by && props.sort_by.field === col.field ? props.sort_by.dir : null;
        return h("div", {
          key: col.field, role: "columnheader", "data-col": col.field, title: col.header_tooltip || undefined,
          "aria-sort": sorted === "asc" ? "ascending" : (sorted === "desc" ? "descending" : "none"),
          className: "xf-mt-hcell" + (col.kind === "sci" || col.kind === "int" ? " num" : "")
            + (sorted ? " sorted " + sorted : ""),
          style: cellStyle(col), onClick: function () { onHeader(col); },
        }, col.header);
      })));

    const n = ordered.length;
    const first = Math.max(0, Math.floor(scrollTop / rowH) - BUFFER);
    const last = Math.min(n, Math.ceil((scrollTop + viewH) / rowH) + BUFFER);
    const selected = props.selected === null || props.selected === undefined ? null : String(props.selected);
    const body = [];
    for (let i = first; i < last; i++) {
      const row = ordered[i];
      const id = String(row[rowKey]);
      body.push(h("div", {
        key: id, role: "row", "data-row-id": id, "aria-selected": id === selected,
        className: "xf-row" + (id === selected ? " sel" : ""),
        style: { top: i * rowH + "px", height: rowH + "px", minWidth: minWidth + "px" },
      }, columns.map(function (col) {
        const v = row[col.field];
        const style = Object.assign({ lineHeight: rowH - 1 + "px" }, cellStyle(col));
        if (col.kind === "status" && colors[v]) { style.color = colors[v]; style.fontWeight = 600; }
        const t = text(col, v);
        return h("div", {
          key: col.field, role: "gridcell", "data-col": col.field, style: style,
          className: "xf-mt-cell" + (col.kind === "sci" || col.kind === "int" ? " num" : ""),
          title: col.tooltip ? t : undefined,
          onClick: function () { select(row, col.field); },
        }, t);
      })));
    }

    const attrs = {
      id: props.id, role: "grid", "aria-rowcount": n, onKeyDown: onKeyDown,
      className: "xf-mt" + (props.className ? " " + props.className : ""), style: props.style,
    };
    if (loading) attrs["data-dash-is-loading"] = true;
    function onScroll(e) {
      const el = e.currentTarget;
      if (head.current) head.current.scrollLeft = el.scrollLeft;
      setScrollTop(el.scrollTop);
    }
    return h("div", attrs,
      header,
      h("div", { className: "xf-mt-scroll", ref: wrap, tabIndex: 0, onScroll: onScroll },
        h("div", { className: "xf-mt-body", role: "rowgroup", style: { height: n * rowH + "px", minWidth: minWidth + "px" } },
          n ? body : h("div", { className: "xf-mt-empty" }, "No layers to show (check the filters above)."))));
  }

  NS.ModuleTable = ModuleTable;
})();
