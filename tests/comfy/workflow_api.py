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


def _bypassed_sources(workflow: dict) -> dict:
    """(node, output slot) of a bypassed node -> the link feeding it, as the frontend routes a bypass: the input at the
    same slot if its type matches, else the first input of that type. An output with no such input is absent."""
    link_type = {link[0]: link[5] for link in workflow["links"]}
    routes = {}
    for node in workflow["nodes"]:
        if node.get("mode", 0) != 4:
            continue
        inputs = node.get("inputs", [])
        for slot, output in enumerate(node.get("outputs", [])):
            same_slot = [inputs[slot]] if slot < len(inputs) else []
            for candidate in same_slot + inputs:
                if candidate.get("link") is not None and link_type[candidate["link"]] == output["type"]:
                    routes[(str(node["id"]), slot)] = candidate["link"]
                    break
    return routes


def ui_to_api(workflow: dict, object_info: dict, overrides: dict | None = None) -> dict:
    """`overrides` maps a node id (int or str) to {input name: value}, applied after conversion. A bypassed
    node (mode 4) passes its input of the output's type through; a muted one (mode 2) is left out."""
    raw = {link[0]: (str(link[1]), link[2]) for link in workflow["links"]}
    bypass = _bypassed_sources(workflow)

    def source(link_id):
        seen = set()
        while raw[link_id] in bypass and link_id not in seen:  # through chains of bypassed nodes
            seen.add(link_id)
            link_id = bypass[raw[link_id]]
        return raw[link_id]

    links = {link_id: source(link_id) for link_id in raw}
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
