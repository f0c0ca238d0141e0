"""Splice shares on the demo's dashboard in headless Chromium."""

from __future__ import annotations

import os

import pytest
from conftest import free_port

import xfdiff
from xfdiff.dashboard import ids

pytestmark = pytest.mark.browser


def test_demo_dashboard_shows_splice_and_fix_shares(dash_duo, demo_report):
    fd = demo_report.first_divergence
    assert fd.splice_share is not None and fd.splice_share > 0.9, demo_report.summary()
    assert "SPLICE" in demo_report.summary()
    dash_duo.start_server(xfdiff.dashboard.create_app(demo_report), port=free_port())
    dash_duo.wait_for_element(f"#{ids.GRID} .xf-row", timeout=30)
    dash_duo.wait_for_contains_text(
        f"#{ids.VERDICT}", f"Replacing {fd.label}'s output with the reference's", timeout=20
    )
    dash_duo.wait_for_contains_text(f"#{ids.FACTS}", "splice: reference output here removes", timeout=20)
    shot = os.environ.get("XFDIFF_SCREENSHOT")
    if shot:  # for looking at the page: XFDIFF_SCREENSHOT=/tmp/splice.png
        dash_duo.driver.set_window_size(1400, 1100)
        dash_duo.driver.save_screenshot(shot)
    assert dash_duo.get_logs() == []
