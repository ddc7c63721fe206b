// Emplace frontend extension: show the text a node sends back (ui.text) on the node itself,
// e.g. what a preference LoRA holds and how it was trained, or the labels a location model
// knows. ComfyUI shows ui.text only for its own Preview Any node, so the pack adds a read-only
// text box to the nodes listed here.
import { app } from "../../scripts/app.js";
import { ComfyWidgets } from "../../scripts/widgets.js";

const NODES_WITH_TEXT = new Set(["EmplaceLoadPreferenceLora", "EmplaceLoadLocationModel"]);
const WIDGET = "emplace_info";

function infoWidget(node) {
  let widget = node.widgets?.find((w) => w.name === WIDGET);
  if (!widget) {
    widget = ComfyWidgets["STRING"](node, WIDGET, ["STRING", { multiline: true }], app).widget;
    widget.element.readOnly = true;
    widget.element.placeholder = "Run the graph to see what the file holds";
    widget.serialize = false; // display only: never saved into the workflow's widgets_values
  }
  return widget;
}

app.registerExtension({
  name: "Emplace.NodeText",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!NODES_WITH_TEXT.has(nodeData.name)) return;
    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      onNodeCreated?.apply(this, arguments);
      infoWidget(this);
    };
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      if (message?.text) infoWidget(this).value = message.text.join("\n");
    };
  },
});
