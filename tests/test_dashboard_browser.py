"""The dashboard in headless Chromium (dash.testing's ``dash_duo``)."""

from __future__ import annotations

import pytest
from conftest import EVIL_IMG, free_port
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

import xfdiff
from xfdiff.dashboard import ids

pytestmark = pytest.mark.browser


def _start(dash_duo, report):
    dash_duo.start_server(xfdiff.dashboard.create_app(report), port=free_port())
    dash_duo.wait_for_element(f"#{ids.GRID} .xf-row", timeout=30)


def test_page_shows_first_divergence_and_its_detail(dash_duo, demo_report):
    _start(dash_duo, demo_report)
    label = demo_report.first_divergence.label
    dash_duo.wait_for_contains_text(f"#{ids.VERDICT}", f"First divergence: {label}", timeout=20)
    dash_duo.wait_for_contains_text(f"#{ids.DETAIL_TITLE}", label, timeout=20)
    dash_duo.wait_for_element(f"#{ids.DEPTH} .scatterlayer .trace", timeout=20)
    dash_duo.wait_for_element(f"#{ids.FIG_HIST} .barlayer", timeout=20)
    assert "first divergence" in dash_duo.find_element(f"#{ids.DETAIL_TITLE}").text
    # The page puts the browser's own String.prototype.trim back over the polyfill's.
    assert dash_duo.driver.execute_script("return String.prototype.trim.toString()").endswith("{ [native code] }")
    assert dash_duo.driver.execute_script(
        "return !!window.Plotly && !document.querySelector('script[src*=\"plotly.min.js\"]')"
    )
    assert dash_duo.get_logs() == []


def test_clicking_a_layer_shows_its_detail(dash_duo, demo_report):
    _start(dash_duo, demo_report)
    fd = demo_report.first_divergence
    dash_duo.wait_for_contains_text(f"#{ids.DETAIL_TITLE}", fd.label, timeout=20)
    # The grid renders only the rows in view (scrolled to the first divergence); click another one.
    rows = dash_duo.find_elements(f"#{ids.GRID} .xf-row")
    row_id = next(r.get_attribute("data-row-id") for r in rows if r.get_attribute("data-row-id") != str(fd.order))
    target = demo_report.layers[int(row_id)]
    dash_duo.find_element(f'#{ids.GRID} .xf-row[data-row-id="{row_id}"] [data-col="layer"]').click()
    dash_duo.wait_for_contains_text(f"#{ids.DETAIL_TITLE}", target.label, timeout=10)
    dash_duo.wait_for_contains_text(f"#{ids.FACTS}", f"{target.torch_type} / {target.flax_type}", timeout=10)
    dash_duo.wait_for_element(f'#{ids.GRID} .xf-row.sel[data-row-id="{row_id}"]', timeout=10)
    # Back to the culprit through the verdict's button.
    dash_duo.find_element(f"#{ids.GOTO_FIRST}").click()
    dash_duo.wait_for_contains_text(f"#{ids.DETAIL_TITLE}", demo_report.first_divergence.label, timeout=10)
    assert dash_duo.get_logs() == []


def test_plots_are_drawn_once_at_their_box_size(dash_duo, demo_report):
    _start(dash_duo, demo_report)
    dash_duo.wait_for_element(f"#{ids.FIG_PROFILE} .main-svg", timeout=20)
    sizes = dash_duo.driver.execute_script("""
        return [...document.querySelectorAll('.js-plotly-plot')].map(gd => {
            const f = gd._fullLayout;
            return {id: gd.parentElement.id, width: f.width, box: gd.clientWidth,
                    margin: [f.margin.l, f.margin.r, f.margin.t, f.margin.b],
                    size: [f._size.l, f._size.r, f._size.t, f._size.b]};
        });""")
    assert {s["id"] for s in sizes} >= {ids.DEPTH, ids.FIG_HIST, ids.FIG_HEATMAP, ids.FIG_SCATTER, ids.FIG_PROFILE}
    for s in sizes:
        assert abs(s["width"] - s["box"]) <= 1, s  # drawn at the width of its box, not at a default width
        assert s["size"] == s["margin"], s  # labels fit the margins: no redraw with pushed-out margins
    assert dash_duo.get_logs() == []


def test_headers_sort_the_table_and_arrow_keys_move_the_selection(dash_duo, demo_report):
    _start(dash_duo, demo_report)
    driver = dash_duo.driver
    top = f"#{ids.GRID} .xf-row[style*='top: 0px']"

    def scroll_to_top():
        driver.execute_script(f"document.querySelector('#{ids.GRID} .xf-mt-scroll').scrollTop = 0")

    dash_duo.find_element(f'#{ids.GRID} [role=columnheader][data-col="max_abs"]').click()
    worst = max(demo_report.layers, key=lambda lyr: lyr.max_abs)
    scroll_to_top()
    dash_duo.wait_for_element(f'{top}[data-row-id="{worst.order}"]', timeout=10)
    header = dash_duo.find_element(f'#{ids.GRID} [role=columnheader][data-col="max_abs"]')
    assert header.get_attribute("aria-sort") == "descending"
    header.click()
    best = min(demo_report.layers, key=lambda lyr: (lyr.max_abs, lyr.order))
    scroll_to_top()
    dash_duo.wait_for_element(f'{top}[data-row-id="{best.order}"]', timeout=10)
    # Select the top row, then walk down the sorted order with the keyboard.
    dash_duo.find_element(f'{top} [data-col="layer"]').click()
    dash_duo.wait_for_contains_text(f"#{ids.DETAIL_TITLE}", best.label, timeout=10)
    second = dash_duo.find_element(f"#{ids.GRID} .xf-row[style*='top: 30px']").get_attribute("data-row-id")
    dash_duo.find_element(f"#{ids.GRID} .xf-mt-scroll").send_keys(Keys.ARROW_DOWN)
    target = demo_report.layers[int(second)]
    dash_duo.wait_for_contains_text(f"#{ids.DETAIL_TITLE}", target.label, timeout=10)
    dash_duo.wait_for_element(f'#{ids.GRID} .xf-row.sel[data-row-id="{second}"]', timeout=10)
    assert dash_duo.get_logs() == []


def test_search_and_status_filters_narrow_the_table(dash_duo, demo_report):
    _start(dash_duo, demo_report)
    n = len(demo_report.layers)
    search = dash_duo.find_element(f"#{ids.SEARCH}")
    search.send_keys("mlp.act")
    dash_duo.wait_for_text_to_equal(f"#{ids.ROW_COUNT}", f"4 of {n} rows", timeout=10)
    assert len(dash_duo.find_elements(f"#{ids.GRID} .xf-row")) == 4
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
