// comfyui-pnp in the ComfyUI frontend: the pack's templates in their numbered order (01 Real image to target
// prompt first). ComfyUI's /workflow_templates lists a pack's workflow files in the file system's order up to
// 0.33 (sorted by name from 0.38 on), and the frontends (1.27 to 1.58) show them as listed, so this sorts this
// pack's list by name when the frontend fetches it. Other packs' lists are left as the server gave them.
import { api } from "../../scripts/api.js";

// this file is served at /extensions/<the folder the pack was cloned into>/pnp_template_order.js
const PACK_FOLDER = decodeURIComponent(new URL(import.meta.url).pathname.split("/")[2]);
const listTemplates = api.getWorkflowTemplates?.bind(api);

if (listTemplates) {
  api.getWorkflowTemplates = async function () {
    const templates = await listTemplates();
    const ours = templates?.[PACK_FOLDER];
    if (Array.isArray(ours)) {
      templates[PACK_FOLDER] = [...ours].sort(); // by UTF-16 code units, as Python sorts ASCII names
    }
    return templates;
  };
}
