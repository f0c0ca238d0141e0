"""The one HTML escaper of every view."""

from __future__ import annotations

import html


def esc(text: object) -> str:
    """``str(text)`` escaped for HTML element content and attribute values (quotes included).

    >>> esc('<b class="x">&</b>')
    '&lt;b class=&quot;x&quot;&gt;&amp;&lt;/b&gt;'
    """
    return html.escape(str(text), quote=True)
