"""UI-format workflow (what people share, what workflows/ holds) -> API-format prompt (what /prompt runs).

The frontend does this conversion in the browser; the tests do it with the server's
/object_info, which gives each node's inputs in widget order.
"""

from __future__ import annotations

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
FRONTEND_ONLY = {"Note", "MarkdownNote"}  # the frontend's own nodes: never sent to the server


def _inputs_in_order(info: dict) -> list[tuple[str, list]]:
    order = info.get("input_order") or {s: list(info["input"].get(s, {})) for s in ("required", "optional")}
    specs = {**info["input"].get("required", {}), **info["input"].get("optional", {})}
    return [(name, specs[name]) for section in ("required", "optional") for name in order.get(section, [])]


def _is_widget(spec: list) -> bool:
    kind, options = spec[0], (spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {})
    if options.get("forceInput"):
        return False
    return isinstance(kind, list) or kind in WIDGET_TYPES


def ui_to_api(workflow: dict, object_info: dict, overrides: dict | None = None) -> dict:
    """`overrides` maps a node id (int or str) to {input name: value}, applied after conversion."""
    links = {link[0]: (str(link[1]), link[2]) for link in workflow["links"]}
    prompt = {}
    for node in workflow["nodes"]:
        if node.get("mode", 0) in (2, 4) or node["type"] in FRONTEND_ONLY:  # muted, bypassed, notes
            continue
        info = object_info.get(node["type"])
        if info is None:
            raise KeyError(f"node type {node['type']} (node {node['id']}) is not registered on the server")
        linked = {i["name"]: links[i["link"]] for i in node.get("inputs", []) if i.get("link") is not None}
        values = list(node.get("widgets_values") or [])
        inputs = {}
        for name, spec in _inputs_in_order(info):
            if _is_widget(spec) and values:
                inputs[name] = values.pop(0)
                if len(spec) > 1 and isinstance(spec[1], dict) and spec[1].get("control_after_generate") and values:
                    values.pop(0)  # the "fixed/randomize" widget the frontend adds after a seed
            if name in linked:
                inputs[name] = list(linked[name])
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    for node_id, values in (overrides or {}).items():
        prompt[str(node_id)]["inputs"].update(values)
    return prompt
