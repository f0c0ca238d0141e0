"""Views of a report: text, notebook card, static HTML file, and the figures and tables they share.

Nothing here needs Dash or plotly (figures are plain plotly.js dicts), so a
report renders as text, a notebook card or an offline HTML file with numpy and
the standard library alone. The Dash app is :mod:`xfdiff.dashboard`; it builds
its page from these same functions.

Modules (one job each):

- :mod:`.escape`: :func:`~.escape.esc`, the one HTML escaper every view uses.
- :mod:`.static`: the files the views ship (``assets/``: the stylesheet and
  script of the HTML report, the partial plotly.js bundle) and how to read them.
- :mod:`.figures`: report (or layer) -> plotly figure dicts.
- :mod:`.tables`: report -> rows, facts, verdict and counts, as plain values.
- :mod:`.text`: the plain-text summary (``Report.summary``, ``str(report)``).
- :mod:`.notebook`: the notebook card with an inline SVG plot (``Report._repr_html_``).
- :mod:`.html_report`: the self-contained HTML file (``Report.to_html``).

Import graph. The rule that keeps it acyclic, counting imports inside
functions as well as module-level ones:

- ``xfdiff.report`` imports :mod:`.text`, :mod:`.notebook` and
  :mod:`.html_report` at module level (they load neither Dash nor plotly);
- modules here import ``xfdiff.report`` only under ``TYPE_CHECKING``, for
  annotations; they read a report through its attributes and never build one;
- the pipeline (``engine``, ``streaming``, ``localize``, ``evidence``,
  ``align``) and the statistics never import a view;
- :mod:`xfdiff.dashboard` imports the views, ``report`` and ``storage``;
  nothing in this package or in ``report`` imports the dashboard.

So the edges run pipeline -> report -> views and dashboard -> {views, report},
and none runs back.
"""
