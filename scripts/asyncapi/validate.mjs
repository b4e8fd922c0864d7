// Validates an AsyncAPI document with the AsyncAPI parser (the spec's JSON Schema plus its
// semantic rules), resolving $refs to local files only. Exit 0 when valid, 1 with the
// diagnostics otherwise, 2 on a usage error.
// Usage: node scripts/asyncapi/validate.mjs docs/asyncapi.yaml
import { Parser, fromFile, DiagnosticSeverity } from "@asyncapi/parser";

const file = process.argv[2];
if (!file) {
  console.error("usage: node validate.mjs ASYNCAPI.yaml");
  process.exit(2);
}

const offline = (uri) => {
  throw new Error(`remote $ref not allowed (the check runs offline): ${uri}`);
};
const parser = new Parser({
  __unstable: {
    resolver: {
      resolvers: [
        { schema: "http", read: offline },
        { schema: "https", read: offline },
      ],
    },
  },
});

const { document, diagnostics } = await fromFile(parser, file).parse();
const names = Object.fromEntries(Object.entries(DiagnosticSeverity).map(([k, v]) => [v, k]));
let errors = 0;
for (const d of diagnostics) {
  const where = d.path && d.path.length ? d.path.join(".") : "(document)";
  const line = d.range ? d.range.start.line + 1 : "?";
  console.log(`${file}:${line}: ${names[d.severity] ?? d.severity}: ${d.code}: ${where}: ${d.message}`);
  if (d.severity === DiagnosticSeverity.Error) errors += 1;
}
if (!document || errors) {
  console.log(`${file}: INVALID (${errors} error(s))`);
  process.exit(1);
}
const channels = document.channels().all().map((c) => c.address());
console.log(`${file}: valid AsyncAPI ${document.version()}; channels: ${channels.join(", ")}`);
