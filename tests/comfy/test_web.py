"""The frontend extension in a real browser (Debian's chromium, headless) against the test server."""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # a headless server and a browser

WORKFLOWS = Path(__file__).resolve().parents[2] / "workflows"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# As this machine's probe starts it: no sandbox as root, and no background traffic on a closed network.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


FRONTENDS = ("pinned", "newest", "newest-vue")  # 1.27.x as ComfyUI 0.3.64 pins it; the registry's newest, both renderers


def newest_frontend() -> Path | None:
    """The registry's newest comfyui-frontend-package, unpacked by .ci/setup next to the venv."""
    for root in (os.environ.get("EMPLACE_NEWEST_FRONTEND"), Path(sys.prefix) / "frontend-newest"):
        static = Path(root) / "comfyui_frontend_package" / "static" if root else None
        if static and (static / "index.html").is_file():
            return static
    return None


@pytest.fixture(scope="module", params=FRONTENDS)
def ui(request, server, tmp_path_factory):
    """A browser on the server with one frontend: the pinned one on the session's server, the newest on a second
    server started with --front-end-root (same pack, same test models), with the Vue node renderer off and on."""
    playwright_api = pytest.importorskip("playwright.sync_api", reason="tier 2 web test needs playwright")
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"tier 2 web test needs Debian's chromium at {CHROMIUM}")
    frontend, own_server = request.param, None
    if frontend != "pinned":
        static = newest_frontend()
        if static is None:
            pytest.skip("the newest frontend is not unpacked (.ci/setup puts it in .venv/frontend-newest)")
        from comfy_server import ComfyServer
        from conftest import COMFYUI, PACK_ROOT

        base = tmp_path_factory.mktemp(f"comfy_{frontend}")
        own_server = ComfyServer(COMFYUI, PACK_ROOT, base, extra_args=("--front-end-root", str(static)))
        for folder in ("checkpoints", "loras"):
            for f in (server.base / folder).iterdir():
                shutil.copy(f, base / folder / f.name)
        own_server.wait_ready()
    srv = own_server or server
    try:
        with playwright_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            errors: list[str] = []
            console: list[str] = []
            page.on("pageerror", lambda e: errors.append(f"{e}\n{e.stack}"))
            page.on("console", lambda m: console.append(f"{m.text} ({m.location.get('url')})") if m.type == "error" else None)
            page.goto(srv.url)
            page.wait_for_function("window.app && window.app.graph && window.app.extensionManager", timeout=120_000)
            if frontend != "pinned":
                vue = frontend == "newest-vue"
                page.evaluate(f"() => window.app.extensionManager.setting.set('Comfy.VueNodes.Enabled', {str(vue).lower()})")
                page.wait_for_timeout(500)
            # Errors while the frontend itself starts are the frontend's; ours would name the pack's script.
            assert not [e for e in errors if "emplace" in e.lower()], errors
            errors.clear()
            page.errors = errors
            page.console_errors = console
            yield SimpleNamespace(server=srv, page=page, frontend=frontend)
            browser.close()
    finally:
        if own_server:
            own_server.stop()


def shot(ui, tmp_path: Path, name: str) -> str:
    """Where a screenshot goes: $EMPLACE_SCREENSHOTS refreshes the README's pictures (the pinned frontend's)."""
    folder = Path(os.environ.get("EMPLACE_SCREENSHOTS", tmp_path))
    return str(folder / (f"{name}.png" if ui.frontend == "pinned" else f"{name}-{ui.frontend}.png"))


def test_the_extension_is_served(server):
    assert any(path.endswith("/emplace.js") for path in server.get_json("/extensions"))


def test_the_lora_loader_shows_what_it_loaded_on_the_node(ui, tmp_path):
    page = ui.page
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
    page.screenshot(path=shot(ui, tmp_path, "preference_lora_workflow"))
    assert page.errors == []


def show_node(page, node_id: int) -> dict:
    """Puts a node at the top left at zoom 1 and returns its screen rectangle (title bar included)."""
    page.keyboard.press("Escape")  # the new-user template browser, if it is open
    rect = page.evaluate("""id => {
        const n = app.graph.getNodeById(id), ds = app.canvas.ds;
        ds.scale = 1; ds.offset = [-n.pos[0] + 30, -n.pos[1] + 60];
        app.graph.setDirtyCanvas(true, true); app.canvas.draw(true, true);
        const c = app.canvas.canvas.getBoundingClientRect();
        return {x: c.left + 10, y: c.top + 20, width: n.size[0] + 40, height: n.size[1] + 60};
    }""", node_id)
    page.wait_for_timeout(400)  # the DOM widgets follow on the next frame
    return rect


def screen_point(page, node_id: int, view: str, fx: float, fy: float) -> tuple[float, float]:
    """Where on the screen a fraction of the image shown by the node's editor or picker lies."""
    g = page.evaluate(f"""id => {{
        const v = app.graph.getNodeById(id).{view}.view, r = v.canvas.getBoundingClientRect(), a = v.area();
        return {{left: r.left, top: r.top, sx: r.width / v.canvas.clientWidth, sy: r.height / v.canvas.clientHeight,
                 x: a.x, y: a.y, w: a.w, h: a.h}};
    }}""", node_id)
    return g["left"] + (g["x"] + fx * g["w"]) * g["sx"], g["top"] + (g["y"] + fy * g["h"]) * g["sy"]


def wait_for_output(server, node_id: str, before: set, timeout_ms: int = 180_000) -> dict:
    import time

    deadline = time.time() + timeout_ms / 1000
    while time.time() < deadline:
        history = server.get_json("/history")
        for prompt_id, entry in history.items():
            if prompt_id not in before and node_id in entry.get("outputs", {}):
                return entry
        time.sleep(0.5)
    raise AssertionError(f"no output from node {node_id}:\n{server.log()[-3000:]}")


def saved_image(server, entry: dict, node_id: str):
    import io

    import numpy as np
    from PIL import Image

    (image,) = entry["outputs"][node_id]["images"]
    return np.asarray(Image.open(io.BytesIO(server.view(image))).convert("RGB")).astype(int)


SPEC = "app.graph.getNodeById(3).widgets.find(w => w.name === 'spec')"


def test_a_box_drawn_with_the_mouse_is_saved_in_the_node_and_painted_there(ui, tmp_path):
    server, page = ui.server, ui.page
    workflow = json.loads((WORKFLOWS / "layout_to_image.json").read_text())
    values = {1: ["tiny_sd15.safetensors"], 2: [128, 96, 1, 0x808080], 3: ["", 512, 512]}
    for node in workflow["nodes"]:
        node["widgets_values"] = values.get(node["id"], node["widgets_values"])
        if node["type"] == "EmplaceIterativeInpaint":
            v = node["widgets_values"]
            v[4], v[10], v[15] = 2, 64, False  # 2 steps at 64 px, no background pass: only the box changes
    page.evaluate("wf => window.app.loadGraphData(wf)", workflow)
    show_node(page, 3)
    start, end = screen_point(page, 3, "emplaceEditor", 0.25, 0.3), screen_point(page, 3, "emplaceEditor", 0.7, 0.8)
    page.mouse.move(*start)
    page.mouse.down()
    page.mouse.move(*end, steps=8)
    page.mouse.up()
    text = page.evaluate(f"{SPEC}.value")
    label, coords = text.split(":")
    assert label == "object" and [round(float(v), 2) for v in coords.split()] == [0.25, 0.3, 0.7, 0.8], text

    # the node's label field, then Delete and undo, all land in the same text
    page.fill(".emplace-box-editor input[data-field='label']", "red cube")
    page.press(".emplace-box-editor input[data-field='label']", "Enter")
    page.evaluate("() => document.querySelector('.emplace-box-editor input').dispatchEvent(new Event('change'))")
    assert page.evaluate(f"{SPEC}.value").startswith("red cube: 0.25")
    page.mouse.click(*screen_point(page, 3, "emplaceEditor", 0.5, 0.5))
    page.keyboard.press("Delete")
    page.wait_for_function(f"{SPEC}.value === ''", timeout=5000)
    # one step back and forth in the frontend's own history (no second, private history racing it)
    page.keyboard.press("Control+z")
    page.wait_for_function(f"{SPEC}.value.startsWith('red cube: 0.25')", timeout=5000)
    page.keyboard.press("Control+y")
    page.wait_for_function(f"{SPEC}.value === ''", timeout=5000)
    page.keyboard.press("Control+z")
    page.wait_for_function(f"{SPEC}.value.startsWith('red cube: 0.25')", timeout=5000)
    # a typed edit shows up in the drawing
    page.evaluate(f"() => {{ {SPEC}.value = 'red cube: 0.25 0.3 0.7 0.8 | a red cube\\nlamp: 4 4 20 20'; }}")
    page.wait_for_function("app.graph.getNodeById(3).emplaceEditor.boxes.length === 2")
    assert page.evaluate("app.graph.getNodeById(3).emplaceEditor.boxes[1].x1") == pytest.approx(20 / 512)
    page.evaluate(f"() => {{ {SPEC}.value = 'red cube: 0.25 0.3 0.7 0.8 | a red cube'; }}")
    page.wait_for_function("app.graph.getNodeById(3).emplaceEditor.boxes.length === 1")

    saved = page.evaluate("() => window.app.graph.serialize()")
    node = next(n for n in saved["nodes"] if n["id"] == 3)
    assert node["widgets_values"] == ["red cube: 0.25 0.3 0.7 0.8 | a red cube", 512, 512]  # the editor saves nothing else

    before = set(server.get_json("/history"))
    page.evaluate("() => window.app.queuePrompt(0)")
    image = saved_image(server, wait_for_output(server, "5", before), "5")
    assert image.shape == (96, 128, 3)
    changed = (image != 128).any(-1)
    assert changed[29:77, 32:90].mean() > 0.5  # the box drawn: x 0.25-0.7 of 128, y 0.3-0.8 of 96
    reach = 4 + 8  # grow + feather
    near = np.zeros_like(changed)
    near[28 - reach:77 + reach, 32 - reach:90 + reach] = True  # the box's pixels: rows 28.8-76.8, columns 32-89.6
    assert not changed[~near].any(), np.argwhere(changed & ~near)[:10]
    # after the run the editor shows the image the boxes were drawn for
    page.wait_for_function("app.graph.getNodeById(3).emplaceEditor.view.image?.naturalWidth === 128")
    page.wait_for_timeout(300)
    page.screenshot(path=shot(ui, tmp_path, "box_editor"), clip=show_node(page, 3))
    assert page.errors == []


def test_clicking_a_proposal_selects_it_for_the_insert(ui, tmp_path):
    server, page = ui.server, ui.page
    import torch
    from PIL import Image

    from emplace.scenes.render import render
    from emplace.scenes.world import sample_camera, sample_scene

    g = torch.Generator().manual_seed(4)  # a scene-world picture: the embedded location model knows this world
    scene, camera = sample_scene(g, (1, 2)), sample_camera(g)
    picture = (render([scene], [camera], 128).image[0].permute(1, 2, 0) * 255).round().byte().numpy()
    Image.fromarray(picture).save(server.base / "input" / "pick_from.png")
    workflow = json.loads((WORKFLOWS / "propose_and_insert.json").read_text())
    for node in workflow["nodes"]:
        if node["type"] == "LoadImage":
            node["widgets_values"][0] = "pick_from.png"
        elif node["type"] == "CheckpointLoaderSimple":
            node["widgets_values"] = ["tiny_sd15.safetensors"]
        elif node["type"] == "EmplaceIterativeInpaint":
            node["widgets_values"][4], node["widgets_values"][10] = 2, 64
    page.evaluate("wf => window.app.loadGraphData(wf)", workflow)
    propose = next(n["id"] for n in workflow["nodes"] if n["type"] == "EmplaceProposeLocations")
    select = next(n["id"] for n in workflow["nodes"] if n["type"] == "EmplaceSelectBoxes")
    indices = f"app.graph.getNodeById({select}).widgets.find(w => w.name === 'indices')"
    assert page.evaluate(f"{indices}.value") == "0"
    page.evaluate("() => window.app.queuePrompt(0)")
    page.wait_for_function(f"app.graph.getNodeById({propose}).emplacePicker.proposals !== null", timeout=180_000)
    page.wait_for_function(f"app.graph.getNodeById({propose}).emplacePicker.view.image !== null")
    proposals = page.evaluate(f"app.graph.getNodeById({propose}).emplacePicker.proposals")
    assert len(proposals["boxes"]) >= 2 and proposals["width"] == 128
    show_node(page, propose)

    def click(i, shift=False):
        x0, y0, x1, y1, _ = proposals["boxes"][i]
        if shift:
            page.keyboard.down("Shift")
        page.mouse.click(*screen_point(page, propose, "emplacePicker", (x0 + x1) / 2 / proposals["width"],
                                       (y0 + y1) / 2 / proposals["height"]))
        if shift:
            page.keyboard.up("Shift")

    target = next(i for i in range(1, len(proposals["boxes"])) if _centre_is_own(proposals["boxes"], i))
    click(target)
    assert page.evaluate(f"{indices}.value") == str(target)  # propose -> click -> the insert takes that box
    if _centre_is_own(proposals["boxes"], 0):
        click(0, shift=True)
        assert page.evaluate(f"{indices}.value") == f"0,{target}"
    page.screenshot(path=shot(ui, tmp_path, "proposal_picker"), clip=show_node(page, propose))
    assert page.errors == []


def _centre_is_own(boxes, i) -> bool:
    """The click at box i's centre picks box i (no smaller box covers that point)."""
    x0, y0, x1, y1, _ = boxes[i]
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    area = lambda b: (b[2] - b[0]) * (b[3] - b[1])  # noqa: E731
    return all(not (b[0] <= cx <= b[2] and b[1] <= cy <= b[3]) or area(b) >= area(boxes[i]) or j == i
               for j, b in enumerate(boxes))


MISSING_NODES = """() => {
    const registered = (window.LiteGraph ?? window.comfyAPI?.litegraph?.LiteGraph)?.registered_node_types ?? {};
    const missing = app.graph.nodes.filter(n => !(n.type in registered)).map(n => n.type);
    const dialogs = [...document.querySelectorAll('.p-dialog, [role=dialog]')].map(d => d.innerText)
        .filter(t => /missing/i.test(t));
    return {missing, dialogs, registered: Object.keys(registered).length};
}"""


@pytest.mark.parametrize("name", sorted(p.stem for p in WORKFLOWS.glob("*.json")))
def test_every_shared_workflow_opens_with_no_missing_node_and_no_error(ui, name, tmp_path):
    """As a user opens it from the template browser: the files it names are in the input folder, nothing else set."""
    from PIL import Image

    server, page = ui.server, ui.page
    workflow = json.loads((WORKFLOWS / f"{name}.json").read_text())
    for node in workflow["nodes"]:
        if node["type"] == "LoadImage":  # the pictures a user would have put in input/
            Image.new("RGB", (96, 64), (120, 130, 140)).save(server.base / "input" / node["widgets_values"][0])
    page.console_errors.clear()
    page.evaluate("wf => window.app.loadGraphData(wf)", workflow)
    page.wait_for_timeout(800)  # a missing-node dialog opens after the load returns
    found = page.evaluate(MISSING_NODES)
    assert found["registered"] > 100, "the frontend's node registry was not found"
    assert found["missing"] == [] and found["dialogs"] == [], found
    loaded = page.evaluate("() => app.graph.nodes.map(n => [Number(n.id), n.type, n.mode])")
    assert sorted(loaded) == sorted([n["id"], n["type"], n.get("mode", 0)] for n in workflow["nodes"])
    if os.environ.get("EMPLACE_THUMBNAILS") and ui.frontend == "pinned":  # refresh the thumbnail: the graph itself
        thumbnail = WORKFLOWS / f"{name}.jpg"
        take_thumbnail(page, thumbnail)
        shutil.copy(thumbnail, server.pack_dir / "workflows" / thumbnail.name)
    # the template browser lists it with its thumbnail (ComfyUI serves workflows/ of every custom node)
    assert name in server.get_json("/api/workflow_templates")[server.pack_module]
    size = page.evaluate("""url => new Promise(done => { const i = new Image();
        i.onload = () => done([i.naturalWidth, i.naturalHeight]); i.onerror = () => done(null); i.src = url; })""",
                         f"/api/workflow_templates/{server.pack_module}/{name}.jpg")
    assert size and min(size) >= 256, f"workflows/{name}.jpg is missing or too small for the template browser"
    console = [e for e in page.console_errors if not frontends_own_traffic(e, server.url)]
    assert page.errors == [] and console == [], page.errors + console


def frontends_own_traffic(console_error: str, server_url: str) -> bool:
    """What the frontend fetches for itself whatever the workflow: release news from api.comfy.org (no internet
    here), user files a fresh server has not got yet (404 under /api/userdata/), core's template index (404 under
    /templates/: the comfyui-workflow-templates package is not installed here) and, from a frontend newer than the
    core, API routes ComfyUI 0.3.64 does not have (1.58's job list: a 404 on /api/jobs, logged again as
    JobsApiError). A 404 on a route the core has (an image under /view, say) is still an error."""
    if "JobsApiError" in console_error:
        return True
    url = console_error.rsplit("(", 1)[-1].rstrip(")")
    if not url.startswith("http"):
        return False
    if not url.startswith(server_url):
        return True
    path = url[len(server_url):].split("?")[0]
    if path.startswith("/api/") and "404" in console_error and not any(r.fullmatch(path[4:]) for r in core_routes()):
        return True
    return any(part in url for part in ("/api/userdata/", f"{server_url}/templates/"))


@functools.cache
def core_routes() -> list[re.Pattern]:
    """The API routes the ComfyUI under test declares (`routes.get("/view")` ...), as patterns of the path."""
    from conftest import COMFYUI

    declared = set()
    for source in (*COMFYUI.glob("*.py"), *COMFYUI.glob("app/**/*.py"), *COMFYUI.glob("api_server/**/*.py")):
        declared |= set(re.findall(r"routes\.(?:get|post|put|patch|delete)\(\s*[\"']([^\"']+)", source.read_text()))
    assert "/view" in declared and "/object_info" in declared, f"no routes found in {COMFYUI}"

    def pattern(route: str) -> re.Pattern:  # aiohttp's "{name}" is one path segment, "{name:regex}" the regex
        parts = re.split(r"\{[^}:]+(?::([^}]+))?\}", route)
        return re.compile("".join(re.escape(p) if i % 2 == 0 else (p or "[^/]+") for i, p in enumerate(parts)))
    return [pattern(route) for route in declared]


def take_thumbnail(page, path: Path, side: int = 2000, saved: int = 768) -> None:
    """The whole graph at a zoom where the editor still draws titles and widgets, scaled down to `saved` px."""
    from PIL import Image

    size = page.viewport_size
    page.set_viewport_size({"width": side + 100, "height": side + 100})
    for _ in range(5):  # the new-user template browser and any other dialog
        if not page.evaluate("() => [...document.querySelectorAll('.p-dialog')].some(d => d.offsetParent)"):
            break
        page.keyboard.press("Escape")
        page.wait_for_timeout(300)
    clip = page.evaluate("""side => {
        const ns = app.graph.nodes, pad = 40, title = 30;
        const x0 = Math.min(...ns.map(n => n.pos[0])), y0 = Math.min(...ns.map(n => n.pos[1] - title));
        const x1 = Math.max(...ns.map(n => n.pos[0] + n.size[0])), y1 = Math.max(...ns.map(n => n.pos[1] + n.size[1]));
        const ds = app.canvas.ds, scale = (side - 2 * pad) / Math.max(x1 - x0, y1 - y0);
        ds.scale = scale; ds.offset = [pad / scale - x0, pad / scale - y0];
        app.graph.setDirtyCanvas(true, true); app.canvas.draw(true, true);
        const c = app.canvas.canvas.getBoundingClientRect();
        return {x: c.left, y: c.top, width: side, height: side};
    }""", side)
    page.wait_for_timeout(500)  # the DOM widgets follow on the next frame
    full = path.with_suffix(".full.png")
    page.screenshot(path=str(full), clip=clip)
    Image.open(full).convert("RGB").resize((saved, saved), Image.LANCZOS).save(path, quality=85)
    full.unlink()
    page.set_viewport_size(size)
