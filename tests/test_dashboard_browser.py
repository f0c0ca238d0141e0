"""The dashboard in headless Chromium (dash.testing's ``dash_duo``)."""

from __future__ import annotations

import pytest
from conftest import EVIL_IMG, free_port
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.common.by import By

import xfdiff
from xfdiff.dashboard import ids

pytestmark = pytest.mark.browser


def _start(dash_duo, report):
    dash_duo.start_server(xfdiff.dashboard.create_app(report), port=free_port())
    dash_duo.wait_for_element(f"#{ids.GRID} .ag-row", timeout=30)


def test_page_shows_first_divergence_and_its_detail(dash_duo, demo_report):
    _start(dash_duo, demo_report)
    label = demo_report.first_divergence.label
    dash_duo.wait_for_contains_text(f"#{ids.VERDICT}", f"First divergence: {label}", timeout=20)
    dash_duo.wait_for_contains_text(f"#{ids.DETAIL_TITLE}", label, timeout=20)
    dash_duo.wait_for_element(f"#{ids.DEPTH} .scatterlayer .trace", timeout=20)
    dash_duo.wait_for_element(f"#{ids.FIG_HIST} .barlayer", timeout=20)
    assert "first divergence" in dash_duo.find_element(f"#{ids.DETAIL_TITLE}").text
    assert dash_duo.get_logs() == []


def test_clicking_a_layer_shows_its_detail(dash_duo, demo_report):
    _start(dash_duo, demo_report)
    fd = demo_report.first_divergence
    dash_duo.wait_for_contains_text(f"#{ids.DETAIL_TITLE}", fd.label, timeout=20)
    # The grid renders only the rows in view (scrolled to the first divergence); click another one.
    rows = dash_duo.find_elements(f"#{ids.GRID} .ag-center-cols-container .ag-row")
    row_id = next(r.get_attribute("row-id") for r in rows if r.get_attribute("row-id") != str(fd.order))
    target = demo_report.layers[int(row_id)]
    dash_duo.find_element(f'#{ids.GRID} .ag-row[row-id="{row_id}"] .ag-cell[col-id="layer"]').click()
    dash_duo.wait_for_contains_text(f"#{ids.DETAIL_TITLE}", target.label, timeout=10)
    dash_duo.wait_for_contains_text(f"#{ids.FACTS}", f"{target.torch_type} / {target.flax_type}", timeout=10)
    dash_duo.wait_for_element(f'#{ids.GRID} .ag-row-selected[row-id="{row_id}"]', timeout=10)
    # Back to the culprit through the verdict's button.
    dash_duo.find_element(f"#{ids.GOTO_FIRST}").click()
    dash_duo.wait_for_contains_text(f"#{ids.DETAIL_TITLE}", demo_report.first_divergence.label, timeout=10)
    assert dash_duo.get_logs() == []


def test_search_and_status_filters_narrow_the_table(dash_duo, demo_report):
    _start(dash_duo, demo_report)
    n = len(demo_report.layers)
    search = dash_duo.find_element(f"#{ids.SEARCH}")
    search.send_keys("mlp.act")
    dash_duo.wait_for_text_to_equal(f"#{ids.ROW_COUNT}", f"4 of {n} rows", timeout=10)
    assert len(dash_duo.find_elements(f"#{ids.GRID} .ag-center-cols-container .ag-row")) == 4
    dash_duo.clear_input(search)
    ok_box = dash_duo.driver.find_element(By.XPATH, f'//*[@id="{ids.STATUS_FILTER}"]//input[@value="ok"]')
    ok_box.click()
    n_bad = sum(lyr.status != "ok" for lyr in demo_report.layers)
    dash_duo.wait_for_text_to_equal(f"#{ids.ROW_COUNT}", f"{n_bad} of {n} rows", timeout=10)
    assert dash_duo.get_logs() == []


def test_hostile_module_names_render_as_text(dash_duo, evil_report):
    _start(dash_duo, evil_report)
    label = evil_report.first_divergence.label
    dash_duo.wait_for_contains_text(f"#{ids.VERDICT}", label, timeout=20)
    dash_duo.wait_for_contains_text(f"#{ids.UNMATCHED}", EVIL_IMG, timeout=20)
    driver = dash_duo.driver
    with pytest.raises(NoAlertPresentException):
        driver.switch_to.alert.text  # noqa: B018 - reading it is the check
    assert driver.find_elements(By.CSS_SELECTOR, "img[src=x]") == []
    scripts = driver.execute_script("return [...document.scripts].map(s => s.text).join('\\n')")
    assert "alert(1)" not in scripts
    assert dash_duo.get_logs() == []
