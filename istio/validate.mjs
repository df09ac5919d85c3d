// Validates Kubernetes and Istio manifests against the schemas shipped by the npm packages
// `kubernetes-models` (Kubernetes API) and `@kubernetes-models/istio` (generated from Istio
// 1.29's CRDs), installed by scripts/install/k8s-schemas.sh.
//
//   node istio/validate.mjs SCHEMAS_DIR FILE.yaml...
//
// Prints one JSON line per YAML document: {file, doc, apiVersion, kind, name, ok, error} plus,
// for the sigmesh configurations they embed, `pluginConfig` (a WasmPlugin's), `filterConfig`
// (the JSON string in an EnvoyFilter's Wasm filter) and `proxyConfig` (a ConfigMap's
// sigmesh.yaml), so the caller can check those with sigmesh's own validation. Exit 1 if any
// document fails or has a kind with no schema.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const [dir, ...files] = process.argv.slice(2);
const mod = (p) => import(pathToFileURL(join(dir, "node_modules", p)).href);
const { parseAllDocuments } = await mod("yaml/dist/index.js");

const KINDS = {
  "extensions.istio.io/v1alpha1/WasmPlugin": "@kubernetes-models/istio/extensions.istio.io/v1alpha1/WasmPlugin.js",
  "networking.istio.io/v1/VirtualService": "@kubernetes-models/istio/networking.istio.io/v1/VirtualService.js",
  "networking.istio.io/v1/DestinationRule": "@kubernetes-models/istio/networking.istio.io/v1/DestinationRule.js",
  "networking.istio.io/v1/Gateway": "@kubernetes-models/istio/networking.istio.io/v1/Gateway.js",
  "networking.istio.io/v1alpha3/EnvoyFilter": "@kubernetes-models/istio/networking.istio.io/v1alpha3/EnvoyFilter.js",
  "apps/v1/Deployment": "kubernetes-models/apps/v1/Deployment.js",
  "v1/ConfigMap": "kubernetes-models/v1/ConfigMap.js",
  "v1/Service": "kubernetes-models/v1/Service.js",
};

let failed = false;
for (const file of files) {
  const docs = parseAllDocuments(readFileSync(file, "utf8"));
  for (const [i, d] of docs.entries()) {
    const out = { file, doc: i };
    try {
      if (d.errors.length) throw new Error(`YAML: ${d.errors.map((e) => e.message).join("; ")}`);
      const obj = d.toJS();
      if (obj === null || obj === undefined) continue;
      out.apiVersion = obj.apiVersion;
      out.kind = obj.kind;
      out.name = obj.metadata?.name;
      const key = `${obj.apiVersion}/${obj.kind}`;
      if (!KINDS[key]) throw new Error(`no schema for ${key}`);
      const m = await mod(KINDS[key]);
      const Model = m[obj.kind] ?? m.default;
      new Model(obj).validate();
      if (obj.kind === "WasmPlugin") out.pluginConfig = obj.spec.pluginConfig;
      if (obj.kind === "EnvoyFilter") {
        for (const p of obj.spec.configPatches ?? []) {
          const v = p.patch?.value?.typed_config?.config?.configuration?.value;
          if (typeof v === "string") out.filterConfig = v;
        }
      }
      if (obj.kind === "ConfigMap" && obj.data?.["sigmesh.yaml"]) out.proxyConfig = obj.data["sigmesh.yaml"];
      out.ok = true;
    } catch (e) {
      out.ok = false;
      out.error = String(e.message ?? e);
      failed = true;
    }
    console.log(JSON.stringify(out));
  }
}
process.exit(failed ? 1 : 0);
