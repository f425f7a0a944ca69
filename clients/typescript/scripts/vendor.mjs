// The web client (chat_api/web/static, no build step) serves this library's compiled ESM from
// chat_api/web/static/vendor/chat-api-client/: a fresh `tsc` build's .js files, byte for byte.
//
//   node scripts/vendor.mjs           build and copy them there
//   node scripts/vendor.mjs --check   exit 1 unless the committed copy equals a fresh build
import { execFileSync } from "node:child_process";
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

const HERE = fileURLToPath(new URL("..", import.meta.url));
const VENDOR = fileURLToPath(new URL("../../../chat_api/web/static/vendor/chat-api-client/", import.meta.url));

function freshBuild() {
  const out = mkdtempSync(join(tmpdir(), "chat-api-client-"));
  try {
    execFileSync(process.execPath, [join(HERE, "node_modules/typescript/bin/tsc"), "-p", HERE, "--outDir", out, "--declaration", "false"], {
      stdio: "inherit",
    });
    const files = new Map();
    for (const name of readdirSync(out).sort()) {
      if (name.endsWith(".js")) files.set(name, readFileSync(join(out, name), "utf8"));
    }
    return files;
  } finally {
    rmSync(out, { recursive: true, force: true });
  }
}

function committed() {
  const files = new Map();
  let names = [];
  try {
    names = readdirSync(VENDOR).sort();
  } catch {
    return files;
  }
  for (const name of names) files.set(name, readFileSync(join(VENDOR, name), "utf8"));
  return files;
}

const fresh = freshBuild();
if (process.argv.includes("--check")) {
  const have = committed();
  const stale = [...new Set([...fresh.keys(), ...have.keys()])].filter((name) => fresh.get(name) !== have.get(name));
  if (stale.length) {
    console.error(
      `chat_api/web/static/vendor/chat-api-client/ is not a fresh build of clients/typescript (${stale.join(", ")}).\n` +
        "Run `npm run vendor` in clients/typescript and commit the result.",
    );
    process.exit(1);
  }
  console.log(`the web client's copy of the library is a fresh build (${fresh.size} files)`);
} else {
  rmSync(VENDOR, { recursive: true, force: true });
  mkdirSync(VENDOR, { recursive: true });
  for (const [name, text] of fresh) writeFileSync(join(VENDOR, name), text);
  console.log(`wrote ${fresh.size} files to ${VENDOR}`);
}
