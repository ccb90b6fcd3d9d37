// comfyui-pnp in the ComfyUI frontend: the pack's templates open at the view saved in them (extra.ds: a zoom at
// which node text is drawn, the graph's top left corner clear of the side and top bars), as files opened by a
// user do. Frontend 1.27 restores a template's saved view itself; 1.49 and 1.58 always fit a template to the
// window, which puts the pack's larger graphs below the zoom at which the canvas draws node text (60 %).
// After the frontend's own load (and, in 1.58, its camera fit on a later frame), this puts the saved view
// back, only for templates whose nodes belong to this pack and only while "Comfy.EnableWorkflowViewRestore"
// is on. Other loads (files, tabs, other packs' templates) are left as the frontend does them.
import { app } from "../../scripts/app.js";

const PACK_ID = "comfyui-pnp"; // the cnr_id the pack's saved nodes carry
const MAX_FRAMES = 120; // waiting for a frontend's deferred camera fit (1.58 runs it on a later frame)

const frame = () => new Promise((resolve) => requestAnimationFrame(() => resolve()));

function savedView(graphData) {
  const ds = graphData?.extra?.ds;
  const ours = graphData?.nodes?.some((node) => node?.properties?.cnr_id === PACK_ID);
  if (!ours || !ds || !(ds.scale > 0) || !Array.isArray(ds.offset) || ds.offset.length !== 2) return null;
  return { scale: ds.scale, offset: [Number(ds.offset[0]), Number(ds.offset[1])] };
}

function viewRestoreOn() {
  const setting = app.extensionManager?.setting?.get?.("Comfy.EnableWorkflowViewRestore");
  return setting !== false;
}

const loadGraphData = app.loadGraphData?.bind(app);
if (loadGraphData) {
  app.loadGraphData = async function (graphData, clean, restoreView, workflow, options) {
    const result = await loadGraphData(...arguments);
    const view = options?.openSource === "template" && restoreView !== false ? savedView(graphData) : null;
    if (result !== false && view && viewRestoreOn()) {
      for (let i = 0; i < MAX_FRAMES && app.pendingCamera; i++) await frame();
      await frame();
      const ds = app.canvas.ds;
      ds.scale = view.scale;
      ds.offset[0] = view.offset[0];
      ds.offset[1] = view.offset[1];
      app.canvas.setDirty(true, true);
    }
    return result;
  };
}
