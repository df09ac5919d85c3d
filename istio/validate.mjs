// Validates Kubernetes, Istio, Argo Rollouts and Flagger manifests against the schemas shipped by
// the npm packages `kubernetes-models` (Kubernetes API), `@kubernetes-models/istio` (generated
// from Istio 1.29's CRDs) and `@kubernetes-models/argo-rollouts`, installed by
// scripts/install/k8s-schemas.sh.
//
//   node istio/validate.mjs SCHEMAS_DIR FILE.yaml...
//
// CustomResourceDefinitions put in SCHEMAS_DIR/crds/ (YAML or JSON, e.g. Flagger's
// `artifacts/flagger/crd.yaml`, or `kubectl get crd NAME -o yaml` from a cluster) check their
// kinds as well, against the CRD's openAPIV3Schema as the API server's strict field validation
// would (an unknown field is an error, int-or-string is either; CEL rules are not run). Flagger's
// kinds have no model package the registries here serve: without its CRD in crds/, Canary and
// MetricTemplate are checked against REDUCED below (the fields and types of Flagger 1.44's CRD,
// with its nested Istio objects only as objects).
//
// Prints one JSON line per YAML document: {file, doc, apiVersion, kind, name, ok, error, schemas}
// (`schemas`: what it was checked against) plus, for the sigmesh configurations they embed,
// `pluginConfig` (a WasmPlugin's), `filterConfig` (the JSON string in an EnvoyFilter's Wasm
// filter) and `proxyConfig` (a ConfigMap's sigmesh.yaml), so the caller can check those with
// sigmesh's own validation. Exit 1 if any document fails or has a kind with no schema.
import { existsSync, readFileSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const [dir, ...files] = process.argv.slice(2);
const mod = (p) => import(pathToFileURL(join(dir, "node_modules", p)).href);
const { parseAllDocuments } = await mod("yaml/dist/index.js");

const ARGO = "@kubernetes-models/argo-rollouts/argoproj.io/v1alpha1";
const KINDS = {
  "extensions.istio.io/v1alpha1/WasmPlugin": "@kubernetes-models/istio/extensions.istio.io/v1alpha1/WasmPlugin.js",
  "networking.istio.io/v1/VirtualService": "@kubernetes-models/istio/networking.istio.io/v1/VirtualService.js",
  "networking.istio.io/v1/DestinationRule": "@kubernetes-models/istio/networking.istio.io/v1/DestinationRule.js",
  "networking.istio.io/v1/Gateway": "@kubernetes-models/istio/networking.istio.io/v1/Gateway.js",
  "networking.istio.io/v1alpha3/EnvoyFilter": "@kubernetes-models/istio/networking.istio.io/v1alpha3/EnvoyFilter.js",
  "argoproj.io/v1alpha1/Rollout": `${ARGO}/Rollout.js`,
  "argoproj.io/v1alpha1/AnalysisTemplate": `${ARGO}/AnalysisTemplate.js`,
  "argoproj.io/v1alpha1/ClusterAnalysisTemplate": `${ARGO}/ClusterAnalysisTemplate.js`,
  "apps/v1/Deployment": "kubernetes-models/apps/v1/Deployment.js",
  "v1/ConfigMap": "kubernetes-models/v1/ConfigMap.js",
  "v1/Service": "kubernetes-models/v1/Service.js",
};

// Flagger's Canary and MetricTemplate (flagger.app/v1beta1, CRD of Flagger 1.44) when its CRD is
// not in crds/: every field of the objects sigmesh's manifests write is listed and typed, and an
// unknown one is an error; the Istio objects Flagger copies into its VirtualService and
// DestinationRules (match, retries, corsPolicy, trafficPolicy, ...) are only checked as objects.
const str = { type: "string" };
const num = { type: "number" };
const bool = { type: "boolean" };
const obj = { type: "object" };
const list = (items) => ({ type: "array", items });
const dur = { type: "string", pattern: "^[0-9]+(m|s)" };
const closed = (properties, required) => ({
  type: "object",
  additionalProperties: false,
  properties,
  ...(required ? { required } : {}),
});
const ref = (kinds, more = {}) =>
  closed({ apiVersion: str, kind: { enum: kinds }, name: str, ...more }, ["apiVersion", "kind", "name"]);
const top = (kind, spec) => ({
  type: "object",
  required: ["apiVersion", "kind", "metadata", "spec"],
  properties: {
    apiVersion: { const: "flagger.app/v1beta1" },
    kind: { const: kind },
    metadata: { type: "object", required: ["name"], properties: { name: str, namespace: str } },
    spec,
    status: obj,
  },
});
const REDUCED_NAME = "reduced flagger.app/v1beta1 schema (no Flagger CRD in SCHEMAS_DIR/crds)";
const REDUCED = {
  "flagger.app/v1beta1/MetricTemplate": top(
    "MetricTemplate",
    closed(
      {
        provider: closed(
          {
            type: {
              enum: ["prometheus", "influxdb", "datadog", "externalmetrics", "stackdriver", "cloudwatch",
                "newrelic", "graphite", "dynatrace", "keptn", "splunk"],
            },
            address: str,
            headers: { type: "object", additionalProperties: list(str) },
            secretRef: closed({ name: str }, ["name"]),
            region: str,
            insecureSkipVerify: bool,
          },
          ["type"],
        ),
        query: { type: "string", minLength: 1 },
      },
      ["provider", "query"],
    ),
  ),
  "flagger.app/v1beta1/Canary": top(
    "Canary",
    closed(
      {
        provider: {
          enum: ["apisix", "appmesh", "appmesh:v1beta2", "contour", "gatewayapi:v1", "gatewayapi:v1beta1", "gloo",
            "istio", "knative", "kubernetes", "kuma", "linkerd", "nginx", "osm", "skipper", "smi:v1alpha1",
            "smi:v1alpha2", "smi:v1alpha3", "traefik"],
        },
        metricsServer: str,
        progressDeadlineSeconds: num,
        targetRef: ref(["DaemonSet", "Deployment", "Service"]),
        autoscalerRef: ref(["HorizontalPodAutoscaler", "ScaledObject"], { primaryScalerQueries: obj, primaryScalerReplicas: obj }),
        ingressRef: ref(["Ingress"]),
        routeRef: ref(["ApisixRoute"]),
        upstreamRef: ref(["Upstream"], { namespace: str }),
        service: closed(
          {
            name: str,
            port: num,
            portName: str,
            appProtocol: str,
            trafficDistribution: { enum: ["PreferClose", "PreferSameZone", "PreferSameNode"] },
            targetPort: { anyOf: [{ type: "integer" }, { type: "string" }] },
            portDiscovery: bool,
            headless: bool,
            timeout: str,
            backendTimeout: str,
            meshName: str,
            backends: list(str),
            hosts: list(str),
            delegation: bool,
            match: list(obj),
            retries: obj,
            rewrite: obj,
            mirror: list(obj),
            headers: obj,
            gateways: list(str),
            gatewayRefs: list(obj),
            corsPolicy: obj,
            trafficPolicy: obj,
            apex: obj,
            primary: obj,
            canary: obj,
            unmanagedMetadata: obj,
          },
          ["port"],
        ),
        skipAnalysis: bool,
        revertOnDeletion: bool,
        suspend: bool,
        analysis: closed({
          interval: dur,
          iterations: num,
          threshold: num,
          maxWeight: num,
          stepWeight: num,
          stepWeights: list(num),
          stepWeightPromotion: num,
          mirror: bool,
          mirrorWeight: num,
          primaryReadyThreshold: num,
          canaryReadyThreshold: num,
          match: list(closed({ headers: obj, queryParams: obj, sourceLabels: obj })),
          metrics: list(
            closed(
              {
                name: str,
                interval: dur,
                threshold: num,
                thresholdRange: closed({ min: num, max: num }),
                query: str,
                templateRef: closed({ name: str, namespace: str }, ["name"]),
                templateVariables: { type: "object", additionalProperties: str },
              },
              ["name"],
            ),
          ),
          alerts: list(
            closed(
              {
                name: str,
                severity: { enum: ["", "info", "warn", "error"] },
                providerRef: closed({ name: str, namespace: str }, ["name"]),
              },
              ["name", "providerRef"],
            ),
          ),
          webhooks: list(
            closed(
              {
                name: str,
                type: {
                  enum: ["", "confirm-rollout", "pre-rollout", "rollout", "confirm-promotion", "post-rollout", "event",
                    "rollback", "confirm-traffic-increase"],
                },
                muteAlert: bool,
                url: str,
                timeout: dur,
                retries: num,
                disableTLS: bool,
                metadata: obj,
              },
              ["name", "url"],
            ),
          ),
          sessionAffinity: closed(
            {
              cookieName: str,
              primaryCookieName: str,
              domain: str,
              httpOnly: bool,
              maxAge: num,
              partitioned: bool,
              path: str,
              sameSite: { enum: ["Strict", "Lax", "None"] },
              secure: bool,
            },
            ["cookieName"],
          ),
        }),
      },
      ["targetRef", "analysis"],
    ),
  ),
};

// A CRD's structural schema as JSON Schema with the API server's strict field validation: an
// object that lists its properties takes no others (unless x-kubernetes-preserve-unknown-fields);
// not inside allOf/anyOf/oneOf/not, whose branches only constrain the properties of the object
// they belong to.
function strict(s, branch = false) {
  if (s === null || typeof s !== "object" || Array.isArray(s)) return s;
  const out = { ...s };
  delete out["x-kubernetes-int-or-string"];
  if (s.properties) {
    out.properties = Object.fromEntries(Object.entries(s.properties).map(([k, v]) => [k, strict(v)]));
    if (s["x-kubernetes-embedded-resource"]) {
      out.properties = { apiVersion: str, kind: str, metadata: obj, ...out.properties };
    }
    if (!branch && s.additionalProperties === undefined && !s["x-kubernetes-preserve-unknown-fields"]) {
      out.additionalProperties = false;
    }
  }
  if (s.additionalProperties && typeof s.additionalProperties === "object") {
    out.additionalProperties = strict(s.additionalProperties);
  }
  if (s.items) out.items = Array.isArray(s.items) ? s.items.map((i) => strict(i)) : strict(s.items);
  for (const k of ["allOf", "anyOf", "oneOf"]) if (s[k]) out[k] = s[k].map((b) => strict(b, true));
  if (s.not) out.not = strict(s.not, true);
  if (s["x-kubernetes-int-or-string"] && !s.anyOf && !s.oneOf) {
    delete out.type;
    out.anyOf = [{ type: "integer" }, { type: "string" }];
  }
  return out;
}

// "group/version/Kind" → {name, schema} from SCHEMAS_DIR/crds/.
const CRDS = {};
const crdDir = join(dir, "crds");
if (existsSync(crdDir)) {
  for (const f of readdirSync(crdDir).filter((n) => /\.(ya?ml|json)$/.test(n)).sort()) {
    for (const d of parseAllDocuments(readFileSync(join(crdDir, f), "utf8"))) {
      const crd = d.toJS();
      if (crd?.kind !== "CustomResourceDefinition") continue;
      for (const v of crd.spec?.versions ?? []) {
        const s = v.schema?.openAPIV3Schema;
        if (!s) continue;
        CRDS[`${crd.spec.group}/${v.name}/${crd.spec.names.kind}`] = {
          name: `CRD ${crd.metadata.name} ${v.name} (crds/${f})`,
          schema: strict(s),
        };
      }
    }
  }
}

let ajv;
async function jsonSchema(schema, value) {
  if (!ajv) {
    const Ajv = (await mod("ajv/dist/ajv.js")).default;
    ajv = new Ajv({ strict: false, allErrors: true, validateFormats: false });
  }
  const check = ajv.compile(schema);
  if (!check(value)) {
    const msgs = check.errors.map((e) => {
      const extra = e.params?.additionalProperty ? ` (${e.params.additionalProperty})` : "";
      return `data${e.instancePath} ${e.message}${extra}`;
    });
    throw new Error([...new Set(msgs)].join(", "));
  }
}

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
      // Every schema the kind has, each one's errors.
      const schemas = [];
      const errors = [];
      const check = async (name, run) => {
        schemas.push(name);
        try {
          await run();
        } catch (e) {
          errors.push(String(e.message ?? e));
        }
      };
      if (KINDS[key]) {
        await check(KINDS[key].match(/^(@[^/]+\/)?[^/]+/)[0], async () => {
          const m = await mod(KINDS[key]);
          const Model = m[obj.kind] ?? m.default;
          new Model(obj).validate();
        });
      }
      if (CRDS[key]) {
        await check(CRDS[key].name, () => jsonSchema(CRDS[key].schema, obj));
      } else if (!KINDS[key] && REDUCED[key]) {
        await check(REDUCED_NAME, () => jsonSchema(REDUCED[key], obj));
      }
      if (!schemas.length) throw new Error(`no schema for ${key}`);
      out.schemas = schemas;
      if (errors.length) throw new Error(errors.join("; "));
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
