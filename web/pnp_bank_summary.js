// comfyui-pnp in the ComfyUI frontend: PnP Feature Bank, PnP Generate Guidance and the bank file nodes show
// what the bank holds (the text of their V3 ui output: steps, sites, megabytes, layers, image size) in a
// read-only box under their widgets. The box is there from the node's creation, of a fixed height, and is not
// saved with the workflow (its widget does not serialize), so layouts and files stay as they were built.
// Uses only the frontend's extension API (registerExtension, addDOMWidget, onExecuted), the same in 1.27 to 1.58.
import { app } from "../../scripts/app.js";

const WIDGET_NAME = "pnp_bank_summary";
const LINE_PX = 16;
const PADDING_PX = 4; // inside the box, above and below the text
const MARGIN_PX = 4; // around the box (the frontend's default DOM widget margin is 10)
// Node type -> [lines the box holds, what it says before the first run]
const SUMMARY_NODES = {
  PnP_FeatureBank: [3, "Run the graph: the bank's steps, sites, size and layers show here."],
  PnP_GenerateGuidance: [3, "Run the graph: the bank's steps, sites, size and layers show here."],
  PnP_LoadFeatures: [4, "Run the graph: the loaded bank's steps, sites, size and layers show here."],
  PnP_SaveFeatures: [2, "Run the graph: the saved file's name and size show here."],
};

function addSummaryBox(node, lines, placeholder) {
  const element = document.createElement("div");
  element.className = "pnp-bank-summary";
  element.textContent = placeholder;
  Object.assign(element.style, {
    boxSizing: "border-box",
    height: "100%",
    padding: `${PADDING_PX}px 6px`,
    overflow: "hidden",
    whiteSpace: "pre-wrap",
    fontSize: "12px",
    lineHeight: `${LINE_PX}px`,
    color: "var(--input-text, #ddd)",
    background: "var(--comfy-input-bg, #222)",
    borderRadius: "4px",
  });
  const height = lines * LINE_PX + 2 * (PADDING_PX + MARGIN_PX);
  const widget = node.addDOMWidget(WIDGET_NAME, "pnp_bank_summary", element, {
    serialize: false,
    hideOnZoom: false,
    margin: MARGIN_PX,
    getMinHeight: () => height,
    getMaxHeight: () => height,
  });
  widget.serialize = false;
  return widget;
}

app.registerExtension({
  name: "comfyui-pnp.BankSummary",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    const summary = SUMMARY_NODES[nodeData.name];
    if (!summary) return;
    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const result = onNodeCreated?.apply(this, arguments);
      addSummaryBox(this, ...summary);
      return result;
    };
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      const widget = this.widgets?.find((w) => w.name === WIDGET_NAME);
      if (widget && message?.text) {
        widget.element.textContent = [].concat(message.text).join("\n");
        this.setDirtyCanvas?.(true, true);
      }
    };
  },
});
