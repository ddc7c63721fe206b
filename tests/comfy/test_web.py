"""The frontend extension in a real browser (Debian's chromium, headless) against the test server."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # a headless server and a browser

WORKFLOWS = Path(__file__).resolve().parents[2] / "workflows"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# As this machine's probe starts it: no sandbox as root, and no background traffic on a closed network.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def page(server):
    playwright_api = pytest.importorskip("playwright.sync_api", reason="tier 2 web test needs playwright")
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"tier 2 web test needs Debian's chromium at {CHROMIUM}")
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(f"{e}\n{e.stack}"))
        page.goto(server.url)
        page.wait_for_function("window.app && window.app.graph && window.app.extensionManager", timeout=120_000)
        # Errors while the frontend itself starts are the frontend's; ours would name the pack's script.
        assert not [e for e in errors if "emplace" in e.lower()], errors
        errors.clear()
        page.errors = errors
        yield page
        browser.close()


def test_the_extension_is_served(server):
    assert any(path.endswith("/emplace.js") for path in server.get_json("/extensions"))


def test_the_lora_loader_shows_what_it_loaded_on_the_node(server, page, tmp_path):
    workflow = json.loads((WORKFLOWS / "preference_lora.json").read_text())
    values = {1: ["tiny_sd15.safetensors"], 2: ["emplace_dpo.safetensors", 1.0, 1.0], 5: [0.0, 128, 128],
              6: [1.0, 64, 64], 7: [32, 32, "add"], 8: ["peft_dpo.safetensors", 1.0, 0.0, 0.8],
              9: [128, 128, 1], 10: [42, "fixed", 2, 7.0, "euler", "normal", 1.0]}
    for node in workflow["nodes"]:
        node["widgets_values"] = values.get(node["id"], node["widgets_values"])

    page.evaluate("wf => window.app.loadGraphData(wf)", workflow)
    shown = "window.app.graph.getNodeById(2).widgets.find(w => w.name === 'emplace_info')"
    assert page.evaluate(f"{shown}.value") == ""  # the text box is there, empty, before a run
    page.evaluate("() => window.app.queuePrompt(0)")
    page.wait_for_function(f"({shown}.value || '').includes('layers')", timeout=180_000)

    text = page.evaluate(f"{shown}.value")
    assert "emplace_dpo.safetensors:" in text and "method: dpo" in text and "base model: sd15" in text
    saved = page.evaluate("() => window.app.graph.serialize()")
    node = next(n for n in saved["nodes"] if n["id"] == 2)
    assert node["widgets_values"] == ["emplace_dpo.safetensors", 1.0, 1.0]  # the display is never saved
    page.keyboard.press("Escape")  # the new-user template browser
    page.evaluate("() => { window.app.canvas.ds.scale = 0.8; window.app.canvas.ds.offset = [0, 0]; "
                  "window.app.graph.setDirtyCanvas(true, true); }")
    shots = Path(os.environ.get("EMPLACE_SCREENSHOTS", tmp_path))  # set it to refresh the README's picture
    page.screenshot(path=str(shots / "preference_lora_workflow.png"))
    assert page.errors == []
