// A node-opcua server that trusts only the client certificates in PKI/trusted/certs/: an
// untrusted one is refused at OpenSecureChannel (BadSecurityChecksFailed) and filed under
// PKI/rejected/, as node-opcua does by default in production.
// Usage: node server.mjs PORT PKI_DIR. Prints "listening PORT" once it accepts connections;
// ends on SIGTERM or when stdin closes (its parent is gone).
import { OPCUACertificateManager } from "node-opcua-certificate-manager";
import { OPCUAServer } from "node-opcua-server";

const [port, pki] = [Number(process.argv[2]), process.argv[3]];
const serverCertificateManager = new OPCUACertificateManager({
  automaticallyAcceptUnknownCertificate: false,
  rootFolder: pki,
});
await serverCertificateManager.initialize();
const server = new OPCUAServer({
  port,
  serverCertificateManager,
  securityPolicies: ["http://opcfoundation.org/UA/SecurityPolicy#Basic256Sha256"],
  securityModes: [3], // SignAndEncrypt
  allowAnonymous: true,
});
await server.initialize();
await server.start();
console.log(`listening ${port}`);

let stopping = false;
async function stop() {
  if (stopping) return;
  stopping = true;
  await server.shutdown(0);
  process.exit(0);
}
process.on("SIGTERM", stop);
process.stdin.on("end", stop);
process.stdin.resume();
