#!/usr/bin/env bash
# Kubernetes, Istio (1.29 CRDs) and Argo Rollouts schemas with their validators, from npm, for the
# manifest test (filter-wasm/e2e/tests/manifests.rs, run through istio/validate.mjs), installed at
#
#   ${SIGMESH_K8S_SCHEMAS:-$HOME/.local/share/sigmesh/k8s-schemas}
#
# Flagger's CRDs are in no package the registries here serve (`@kubernetes-models/flagger` is not
# reachable): istio/validate.mjs checks flagger.app objects against a CRD YAML dropped into
# `$dir/crds/` when there is one (Flagger's `artifacts/flagger/crd.yaml`, or
# `kubectl get crd canaries.flagger.app metrictemplates.flagger.app -o yaml`), else against a
# reduced schema of its own; `ajv` is what it validates CRD schemas with.
#
# Does nothing when the pinned versions are there.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
dir="${SIGMESH_K8S_SCHEMAS:-$HOME/.local/share/sigmesh/k8s-schemas}"
pkgs=("@kubernetes-models/istio@3.0.1" "@kubernetes-models/argo-rollouts@2.0.0" "kubernetes-models@5.1.0" "ajv@8.20.0" "yaml@2.8.1")
stamp="$dir/.installed"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "${pkgs[*]}" ]; then
  exit 0
fi
have node && have npm || apt_install nodejs npm
echo "installing ${pkgs[*]} (npm) into $dir"
mkdir -p "$dir"
[ -f "$dir/package.json" ] || echo '{"name":"sigmesh-k8s-schemas","private":true}' > "$dir/package.json"
(cd "$dir" && npm install --no-audit --no-fund --loglevel=error "${pkgs[@]}")
echo "${pkgs[*]}" > "$stamp"
