"""The dashboard in headless Chromium against a live, seeded controller.

Login and isolation, the searches list, a search's scatter (every individual plotted), hover
and click on a point, the architecture view and its buttons, live updates over the event
stream, the 5,000-point search (its render time is measured and saved, never asserted), and
fronts overlaid. Screenshots and timings go to ``artifacts/dashboard/``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.settings import Settings
from services.storage.base import JobState
from tests.services.dashboard.conftest import IN_CI, NUM_LAYERS, Dashboard, Tab

if not IN_CI:  # under CI a missing playwright is an error, never a skip
    pytest.importorskip("playwright")
from playwright.sync_api import Page, expect  # noqa: E402
from playwright.sync_api import TimeoutError as PlaywrightTimeout  # noqa: E402

DEPLOY_PATH = "/api/v1/models/{model_id}/deploy"


# -- helpers -------------------------------------------------------------------------------------
def login(tab: Tab, dash: Dashboard, key: str | None = None) -> Page:
    page = tab.page
    page.goto(f"{dash.url}/dashboard")
    page.fill("#api-key", key or dash.alice_key)
    page.click("#login-form button[type=submit]")
    expect(page.locator("#searches-table tbody tr").first).to_be_visible()
    return page


def open_search(page: Page, search_id: int, points: int) -> None:
    """Click the search in the list and wait until the scatter plots ``points`` individuals."""
    page.click(f"tr[data-search-id='{search_id}'] .name a")
    page.wait_for_function(f"() => window.hyctasDashboard.plotted().points === {points}")


def plotted(page: Page, chart: str = "scatter") -> dict[str, Any]:
    result: dict[str, Any] = page.evaluate("(id) => window.hyctasDashboard.plotted(id)", chart)
    return result


def leftmost_point(page: Page) -> tuple[float, float]:
    """Screen position of the leftmost SVG marker (the cheapest arch: far from the mode bar and the legend)."""
    boxes = [b for b in (p.bounding_box() for p in page.locator("#scatter .scatterlayer path.point").all()) if b]
    box = min(boxes, key=lambda b: b["x"])
    return box["x"] + box["width"] / 2, box["y"] + box["height"] / 2


def set_generation(page: Page, index: int) -> None:
    page.evaluate(
        "(g) => { const s = document.querySelector('#gen-slider'); s.value = String(g);"
        " s.dispatchEvent(new Event('input', {bubbles: true})); }",
        index,
    )


def publish_until(dash: Dashboard, page: Page, event: dict[str, Any], condition: str, timeout_s: float = 20) -> None:
    """Publish ``event`` until the page shows ``condition``.

    The bus delivers only to streams listening at that moment, and the page's stream may
    (re)connect just after it reads "connected"; the page's refresh is idempotent, so resending is safe.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        dash.events.publish(event)
        try:
            page.wait_for_function(condition, timeout=2_000)
            return
        except PlaywrightTimeout:
            if time.monotonic() > deadline:
                raise


def assert_clean(tab: Tab) -> None:
    assert not tab.errors, tab.errors
    assert not tab.offsite, f"requests left the controller: {tab.offsite}"


def screenshot(page: Page, artifacts: Path, name: str) -> Path:
    path = artifacts / name
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000, f"screenshot {path} looks empty"
    return path


# -- static files --------------------------------------------------------------------------------
def test_page_and_assets_are_served_without_a_key(dashboard: Dashboard) -> None:
    """The page, its script and style, and plotly.js from the installed package: no key, no CDN."""
    from importlib import resources

    page = httpx.get(f"{dashboard.url}/dashboard")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert "http://" not in page.text and "https://" not in page.text  # nothing from elsewhere
    for path, kind in (("/dashboard/app.js", "text/javascript"), ("/dashboard/app.css", "text/css")):
        r = httpx.get(dashboard.url + path)
        assert r.status_code == 200 and r.headers["content-type"].startswith(kind), path
    bundle = resources.files("plotly") / "package_data" / "plotly.min.js"
    r = httpx.get(f"{dashboard.url}/dashboard/plotly.min.js")
    assert r.status_code == 200 and r.content == bundle.read_bytes()
    assert "immutable" in r.headers["cache-control"] and "max-age=31536000" in r.headers["cache-control"]
    schema = httpx.get(f"{dashboard.url}/openapi.json").json()
    assert not [p for p in schema["paths"] if p.startswith("/dashboard")]  # not part of the API


# -- login -------------------------------------------------------------------------------------
def test_without_a_key_only_the_login_shows(tab: Tab, dashboard: Dashboard) -> None:
    page = tab.page
    page.goto(f"{dashboard.url}/dashboard", wait_until="networkidle")
    expect(page.locator("#login-view")).to_be_visible()
    expect(page.locator("#searches-view")).to_be_hidden()
    assert page.locator("#searches-table tbody tr").count() == 0
    assert not tab.api_successes(), "data was fetched without a key"
    # A wrong key is refused and shows nothing either.
    page.fill("#api-key", "hyk_" + "x" * 43)
    page.click("#login-form button[type=submit]")
    expect(page.locator("#login-error")).to_contain_text("refused")
    expect(page.locator("#searches-view")).to_be_hidden()
    assert not tab.api_successes(), "data was fetched with a wrong key"
    for name in dashboard.searches:
        assert name not in page.content()
    assert page.evaluate("sessionStorage.getItem('hyctas.apiKey')") is None
    assert not [e for e in tab.errors if "401" not in e], tab.errors  # the refused login logs its 401
    assert not tab.offsite


def test_login_lists_only_the_users_searches(tab: Tab, dashboard: Dashboard, artifacts: Path) -> None:
    page = login(tab, dashboard)
    rows = page.locator("#searches-table tbody tr")
    mine = [s for s in dashboard.searches.values() if s.name != "bob-secret"]
    expect(rows).to_have_count(len(mine))
    assert "bob-secret" not in page.content()
    for s in mine:
        public = dashboard.api(f"/searches/{s.id}")
        row = page.locator(f"tr[data-search-id='{s.id}']")
        expect(row.locator(".name")).to_have_text(s.name)
        expect(row.locator(".status")).to_have_text(public["state"])
        expect(row.locator(".progress span")).to_have_text(f"{public['generation']} / {public['total_generations']}")
        expect(row.locator(".hv")).to_have_text(f"{public['hypervolume']:.4f}")
        expect(row.locator(".elapsed")).not_to_have_text("–")
    expect(page.locator(f"tr[data-search-id='{dashboard.searches['edge-flops'].id}'] .remaining")).not_to_have_text("–")
    screenshot(page, artifacts, "searches.png")
    # The key lives in this tab's session: a reload stays logged in; logging out forgets it.
    assert page.evaluate("sessionStorage.getItem('hyctas.apiKey')") == dashboard.alice_key
    page.reload()
    expect(rows).to_have_count(len(mine))
    page.click("#logout")
    expect(page.locator("#login-view")).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('hyctas.apiKey')") is None
    assert_clean(tab)


# -- one search ---------------------------------------------------------------------------------
def test_search_page_plots_hovers_and_shows_an_architecture(tab: Tab, dashboard: Dashboard, artifacts: Path) -> None:
    s = dashboard.searches["cityscapes-lat"]
    individuals = dashboard.api(f"/searches/{s.id}/individuals")["data"]
    verified = {"state": "succeeded", "k": 4, "done": 4, "epochs": 8, "rows": [], "kendall_tau": 0.6667,
                "spearman": 0.8, "job_id": None, "error": None}  # fmt: skip
    dashboard.storage.set_search_verification(s.id, verified)
    page = login(tab, dashboard)
    open_search(page, s.id, len(individuals))
    drawn = page.locator("#scatter .scatterlayer path.point")
    expect(drawn).to_have_count(len(individuals))  # SVG markers actually in the page
    assert plotted(page)["types"] == ["scatter"]
    pareto = dashboard.api(f"/searches/{s.id}/pareto")
    front = page.evaluate("() => document.querySelector('#scatter').data.find((t) => t.meta === 'front')")
    assert front["line"]["shape"] == "hv" and len(front["x"]) == len(pareto["data"])
    assert plotted(page, "hv-chart")["traces"] == 1
    expect(page.locator("#search-facts .fact-generation dd")).to_have_text("3 of 3")
    fidelity = page.locator("#search-facts .fact-supernet-fidelity")
    expect(fidelity.locator("dt")).to_have_text("supernet fidelity")
    expect(fidelity.locator("dd")).to_have_text("Kendall \u03c4 0.67 over K=4 retrained front points")

    # Hover: the tooltip names the arch under the mouse and its metrics.
    x, y = leftmost_point(page)
    page.mouse.move(x, y)
    hover = page.locator("#scatter .hoverlayer .hovertext")
    expect(hover).to_be_visible()
    hovered = page.evaluate("() => window.hyctasDashboard.hovered")
    expect(hover).to_contain_text(hovered["arch_hash"])
    expect(hover).to_contain_text("mIoU")
    expect(hover).to_contain_text("GMACs")

    # Click: the architecture panel shows branches of cells by scale, ops, widths and metrics.
    page.mouse.click(x, y)
    panel = page.locator("#arch-panel")
    expect(panel.locator(".arch-hash")).to_have_text(hovered["arch_hash"])
    ind = next(i for i in individuals if i["arch_hash"] == hovered["arch_hash"])
    expect(panel.locator(".branch")).to_have_count(ind["num_branches"])
    expect(panel.locator(".arch-grid .cell")).to_have_count(ind["num_branches"] * NUM_LAYERS)
    n_attention = sum(op == 4 for ops in ind["arch"]["ops"] for op in ops)
    expect(panel.locator(".arch-grid .cell.op-sa")).to_have_count(n_attention)
    n_down = sum(sum(downs) for downs in ind["arch"]["downs"])
    expect(panel.locator(".arch-grid .cell.down")).to_have_count(n_down)
    o = ind["objectives"]
    expect(panel.locator(".metric-GMACs")).to_have_text(f"{o['gmacs']:.2f}")
    expect(panel.locator(".metric-params")).to_have_text(f"{o['params_m']:.2f} M")
    expect(panel.locator(".metric-latency")).to_have_text(f"{o['latency_ms']:.2f} ms")
    shot = screenshot(page, artifacts, "search-page.png")

    # Export: the official JSON of the arch, downloaded.
    with page.expect_download() as download:
        page.click("#export-json")
    assert json.loads(Path(download.value.path()).read_text()) == ind["arch"]
    # Retrain: one job for this arch over the search's supernet.
    page.fill("#retrain-epochs", "3")
    page.click("#retrain")
    expect(page.locator("#retrain-status")).to_contain_text("retrain job #")
    job_id = int(page.locator("#retrain-status").get_attribute("data-job-id") or 0)
    job = dashboard.storage.get_job(job_id)
    assert (job.kind, job.owner, job.payload["retrain"]["epochs"]) == ("retrain", "alice", 3)
    models, _ = dashboard.storage.list_models(owner="alice", job_id=job_id)
    assert [m.arch_hash for m in models] == [ind["arch_hash"]]
    # Deploy: enabled when the controller serves models; it takes the arch's retrained model.
    if DEPLOY_PATH in dashboard.api_schema()["paths"]:
        page.click("#deploy")
        expect(page.locator("#retrain-status")).to_contain_text("retrain it first")
        dashboard.storage.update_model(models[0].id, state=JobState.RUNNING)
        dashboard.storage.update_model(models[0].id, state=JobState.SUCCEEDED, checkpoint_uri="/ckpt/m.pt")
        # What the worker publishes when the retrain ends (the controller drops alice's cached reads).
        dashboard.events.publish({"type": "job", "owner": "alice", "job_id": job_id, "kind": "retrain",
                                  "state": "succeeded"})  # fmt: skip
        page.click("#deploy")
        expect(page.locator("#retrain-status")).to_contain_text(f"deployment model-{models[0].id}")
        deployment = dashboard.storage.find_deployment(f"model-{models[0].id}")
        assert deployment is not None
        # Once its replicas report, the panel shows the served latency beside the prediction.
        measured = round(1.25 * o["latency_ms"], 3)
        dashboard.storage.record_serving_latency(deployment.id, {
            "input_size": [64, 128], "requests": 40, "p50_ms": measured, "p90_ms": measured, "mean_ms": measured,
            "mean_batch": 1.0, "backend": "onnxruntime", "device": "cpu", "device_class": "cpu"})  # fmt: skip
        time.sleep(Settings().read_cache_s)  # a replica's report (no event) shows within the read cache's time
        page.mouse.click(x, y)
        served = page.locator(f"#served .served-latency[data-deployment='model-{models[0].id}']")
        expect(served).to_contain_text(f"{measured:.2f} ms measured (p50 of 40 requests, onnxruntime on cpu, 64x128)")
        expect(served).to_contain_text(f"{o['latency_ms']:.2f} ms predicted")
    else:
        expect(page.locator("#deploy")).to_be_disabled()
        expect(page.locator("#deploy")).to_have_attribute("title", "serving: coming")

    # Generations: select one, then animate them all.
    set_generation(page, 0)
    page.wait_for_function("() => window.hyctasDashboard.plotted().points === 20")
    set_generation(page, 2)
    page.wait_for_function(f"() => window.hyctasDashboard.plotted().points === {len(individuals)}")
    page.click("#play")
    page.wait_for_function("() => window.hyctasDashboard.plotted().points === 20")
    page.wait_for_function(
        f"() => window.hyctasDashboard.plotted().points === {len(individuals)}"
        " && document.querySelector('#play').textContent === 'Play'"
    )
    assert_clean(tab)
    print(f"\ndashboard screenshot: {shot}")


def test_deploy_waits_for_a_serving_endpoint(tab: Tab, dashboard: Dashboard) -> None:
    """On a controller without ``POST /models/{id}/deploy`` the button is there, disabled, and says why.

    It also opens a second search in the same page: its points must be clickable too.
    """
    first, second = dashboard.searches["cityscapes-lat"], dashboard.searches["edge-flops"]
    tab.page.route("**/openapi.json", lambda route: route.fulfill(json={"openapi": "3.1.0", "paths": {}}))
    page = login(tab, dashboard)
    open_search(page, first.id, first.population * first.generations)
    page.click("#crumbs a[href='#/']")
    open_search(page, second.id, len(dashboard.storage.list_individuals(second.id)))
    page.mouse.click(*leftmost_point(page))
    expect(page.locator("#arch-panel .arch-hash")).to_be_visible()
    expect(page.locator("#deploy")).to_be_disabled()
    expect(page.locator("#deploy")).to_have_attribute("title", "serving: coming")
    assert_clean(tab)


def test_live_updates_reach_the_list_and_the_open_search(tab: Tab, dashboard: Dashboard, artifacts: Path) -> None:
    """A worker commits generations and publishes events: the page follows without a reload."""
    s = dashboard.searches["edge-flops"]
    page = login(tab, dashboard)
    page.wait_for_function("() => window.hyctasDashboard.live")
    page.evaluate("() => { window.__sameDocument = true; }")
    row = page.locator(f"tr[data-search-id='{s.id}']")
    before = dashboard.storage.get_search(s.id).generation + 1  # committed generations

    # A progress event (it names only the job, as the worker's heartbeats do) updates the list.
    dashboard.commit_generation(s.name)
    event = {"type": "progress", "owner": "alice", "job_id": s.job_id, "kind": "search", "generation": before + 1}
    publish_until(
        dashboard,
        page,
        event,
        f"() => document.querySelector(\"tr[data-search-id='{s.id}'] .progress span\").textContent"
        f" === '{before + 1} / {s.generations}'",
    )
    expect(row.locator(".hv")).to_have_text(f"{dashboard.api(f'/searches/{s.id}')['hypervolume']:.4f}")

    # A generation event adds the new individuals to the open search's scatter.
    open_search(page, s.id, (before + 1) * s.population)
    dashboard.commit_generation(s.name)
    event = {"type": "generation", "owner": "alice", "job_id": s.job_id, "search_id": s.id, "generation": before + 1}
    publish_until(
        dashboard, page, event, f"() => window.hyctasDashboard.plotted().points === {(before + 2) * s.population}"
    )
    expect(page.locator("#search-facts .fact-generation dd")).to_have_text(f"{before + 2} of {s.generations}")
    expect(page.locator("#gen-label")).to_contain_text(f"1-{before + 2}")
    assert plotted(page, "hv-chart")["traces"] == 1
    assert page.evaluate("() => window.__sameDocument === true"), "the page reloaded"
    # Another user's events never reach this page.
    seen = page.evaluate("() => window.hyctasDashboard.eventsSeen")
    dashboard.events.publish({"type": "generation", "owner": "bob", "search_id": s.id, "job_id": s.job_id})
    dashboard.events.publish({"type": "job", "owner": "alice", "job_id": 10**6, "kind": "retrain", "state": "queued"})
    page.wait_for_function(f"() => window.hyctasDashboard.eventsSeen >= {seen + 1}")
    assert page.evaluate("() => window.hyctasDashboard.eventsSeen") == seen + 1
    screenshot(page, artifacts, "live-search.png")
    assert_clean(tab)


def test_a_search_waiting_for_its_device_class_says_so(tab: Tab, dashboard: Dashboard) -> None:
    """The worker reports waiting_for_device while no node of the search's class is up: the list shows it."""
    s = dashboard.searches["edge-flops"]
    page = login(tab, dashboard)
    page.wait_for_function("() => window.hyctasDashboard.live")
    waiting = page.locator(f"tr[data-search-id='{s.id}'] .waiting")
    expect(waiting).to_have_count(0)
    dashboard.storage.heartbeat_job(s.job_id, "seed-worker", progress={"waiting_for_device": "V100"})
    event = {"type": "progress", "owner": "alice", "job_id": s.job_id, "kind": "search"}
    publish_until(dashboard, page, event, f"() => !!document.querySelector(\"tr[data-search-id='{s.id}'] .waiting\")")
    expect(waiting).to_have_text("waiting for a V100 node")
    dashboard.storage.heartbeat_job(s.job_id, "seed-worker", progress={"waiting_for_device": None})
    publish_until(dashboard, page, event, f"() => !document.querySelector(\"tr[data-search-id='{s.id}'] .waiting\")")
    assert_clean(tab)


def test_five_thousand_points_render_and_stay_interactive(tab: Tab, dashboard: Dashboard, artifacts: Path) -> None:
    """The 5,000-individual search in WebGL: every point plotted; render times recorded, not asserted."""
    s = dashboard.searches["big-lat"]
    total = s.population * s.generations
    page = login(tab, dashboard)
    t0 = time.perf_counter()
    open_search(page, s.id, total)
    open_s = time.perf_counter() - t0
    assert plotted(page)["types"] == ["scattergl"]
    first = page.evaluate("() => window.hyctasDashboard.renders.filter((r) => r.chart === 'scatter')")[-1]

    # Re-renders: half the generations, all again, then another cost axis (front computed in the page).
    set_generation(page, s.generations // 2 - 1)
    page.wait_for_function(f"() => window.hyctasDashboard.plotted().points === {total // 2}")
    set_generation(page, s.generations - 1)
    page.wait_for_function(f"() => window.hyctasDashboard.plotted().points === {total}")
    page.select_option("#cost-axis", "gmacs")
    page.wait_for_function("() => document.querySelector('#scatter').layout.xaxis.title.text === 'GMACs'")
    renders = page.evaluate("() => window.hyctasDashboard.renders.filter((r) => r.chart === 'scatter')")
    page.select_option("#cost-axis", "latency_ms")
    page.wait_for_function("() => document.querySelector('#scatter').layout.xaxis.title.text === 'latency (ms)'")

    # Hover and click work on WebGL points too: aim at the cheapest arch on the front.
    cheapest = dashboard.api(f"/searches/{s.id}/pareto")["data"][0]
    at = page.evaluate(
        """(hash) => {
            const gd = document.querySelector('#scatter'), fl = gd._fullLayout, box = gd.getBoundingClientRect();
            for (const t of gd.data.filter((t) => t.meta === 'individuals')) {
                const i = t.text.findIndex((text) => text.includes(hash));
                if (i >= 0) return {x: box.left + fl.xaxis._offset + fl.xaxis.l2p(t.x[i]),
                                    y: box.top + fl.yaxis._offset + fl.yaxis.l2p(t.y[i])};
            }
            return null;
        }""",
        cheapest["arch_hash"],
    )
    assert at is not None
    page.mouse.move(at["x"], at["y"])
    expect(page.locator("#scatter .hoverlayer .hovertext")).to_contain_text(cheapest["arch_hash"])
    page.mouse.click(at["x"], at["y"])
    expect(page.locator("#arch-panel .arch-hash")).to_have_text(cheapest["arch_hash"])

    shot = screenshot(page, artifacts, "search-5000.png")
    timings = {
        "points": total,
        "trace_type": "scattergl",
        "browser": tab.page.context.browser.version if tab.page.context.browser else None,
        "open_search_s": round(open_s, 3),  # click to all points plotted: fetch + parse + render
        "first_render_ms": round(first["ms"], 1),  # Plotly.react on an empty div (= newPlot)
        "first_render_to_paint_ms": round(first["paint_ms"], 1),
        "rerenders_ms": [
            {"points": r["points"], "ms": round(r["ms"], 1), "paint_ms": round(r["paint_ms"], 1)} for r in renders[1:]
        ],
        "screenshot": str(shot),
    }
    out = artifacts / "render-5000.json"
    out.write_text(json.dumps(timings, indent=2) + "\n")
    print(f"\n5,000-point render: {json.dumps(timings)}\nsaved to {out}")
    assert_clean(tab)


def test_fronts_of_several_searches_overlaid(tab: Tab, dashboard: Dashboard, artifacts: Path) -> None:
    a, b = dashboard.searches["cityscapes-lat"], dashboard.searches["big-lat"]
    page = login(tab, dashboard)
    expect(page.locator("#compare-selected")).to_be_disabled()
    for s in (a, b):
        page.check(f"tr[data-search-id='{s.id}'] .compare-pick")
    page.click("#compare-selected")
    page.wait_for_function("() => window.hyctasDashboard.plotted('overlay').traces === 2")
    overlay = plotted(page, "overlay")
    assert overlay["names"] == [a.name, b.name]
    assert overlay["lengths"] == [len(dashboard.api(f"/searches/{s.id}/pareto")["data"]) for s in (a, b)]
    expect(page.locator("#compare-list li")).to_have_count(2)
    screenshot(page, artifacts, "compare.png")
    # Another cost axis: each front is recomputed on it from the search's individuals.
    page.select_option("#compare-axis", "gmacs")
    page.wait_for_function(
        "() => document.querySelector('#overlay').layout.xaxis.title.text === 'GMACs'"
        " && window.hyctasDashboard.plotted('overlay').traces === 2"
    )
    assert all(n > 0 for n in plotted(page, "overlay")["lengths"])
    assert_clean(tab)
