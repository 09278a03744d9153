// Validates the prometheus-operator objects among Kubernetes documents (a JSON list on
// stdin) with the validators @kubernetes-models/prometheus-operator generates from the
// operator's Go API types: types, enums, patterns and required fields. (Like the API
// server it does not refuse unknown fields; values.schema.json does that for the chart's
// own keys.) kubernetes-validate has no schemas for these kinds.
//
// Run by xtask deploy_checks from a copy in <root>/target/node, next to its
// node_modules (ES modules resolve packages from the script's own directory).
import * as v1 from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1";
import { readFileSync } from "node:fs";

const docs = JSON.parse(readFileSync(0, "utf8"));
let failed = 0;
let checked = 0;
for (const doc of docs) {
  if (doc.apiVersion !== "monitoring.coreos.com/v1") continue;
  const Model = v1[doc.kind];
  const name = `${doc.kind}/${doc.metadata?.name}`;
  if (typeof Model !== "function") {
    console.error(`${name}: no model for kind ${doc.kind}`);
    failed++;
    continue;
  }
  try {
    new Model(doc).validate();
    checked++;
  } catch (e) {
    console.error(`${name}: ${e.message}`);
    failed++;
  }
}
console.log(`${checked} prometheus-operator objects valid, ${failed} invalid`);
process.exit(failed ? 1 : 0);
