// Decodes Sparkplug B payloads with Eclipse Tahu's JavaScript reference implementation
// (sparkplug-payload), an implementation independent of the agent's encoder.
// Reads one base64 payload per line on stdin; writes one JSON object per line on stdout: the
// decoded payload, 64-bit integers as numbers (as strings beyond 2^53), bytes as base64.
// Exit 0 when every line decoded, 1 otherwise (with the error on stderr).
// Usage: node scripts/sparkplug/decode.mjs < payloads.b64
import { createInterface } from "node:readline";
import sparkplug from "sparkplug-payload";

const spb = sparkplug.get("spBv1.0");

const plain = (key, value) => {
  // protobufjs gives 64-bit integers as Long objects (from its "long" dependency).
  if (value && typeof value === "object" && typeof value.toNumber === "function" && "unsigned" in value) {
    const n = value.toNumber();
    return Number.isSafeInteger(n) ? n : value.toString();
  }
  if (value instanceof Uint8Array) {
    return Buffer.from(value).toString("base64");
  }
  if (value && value.type === "Buffer" && Array.isArray(value.data)) {
    return Buffer.from(value.data).toString("base64");
  }
  return value;
};

let failed = 0;
let lineNo = 0;
for await (const line of createInterface({ input: process.stdin })) {
  lineNo += 1;
  const text = line.trim();
  if (!text) continue;
  try {
    const payload = spb.decodePayload(Buffer.from(text, "base64"));
    process.stdout.write(JSON.stringify(payload, plain) + "\n");
  } catch (err) {
    failed += 1;
    process.stderr.write(`line ${lineNo}: cannot decode: ${err}\n`);
  }
}
// exitCode, not process.exit(): exit() drops stdout writes still pending on a pipe.
process.exitCode = failed ? 1 : 0;
