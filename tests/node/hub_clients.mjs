// The hub's JavaScript clients against an HF endpoint, as a Node service runs them: prints one
// JSON line. Usage:
//   node hub_clients.mjs hub URL REPO OUT [TOKEN]      @huggingface/hub: listFiles,
//        downloadFile (each file into OUT), fileExists (a file there and one that is not)
//   node hub_clients.mjs transformers URL REPO CACHE [TOKEN]   transformers.js
//        (env.remoteHost): a feature-extraction pipeline, mean-pooled, normalized. It sends
//        HF_TOKEN to huggingface.co only: for another host the token goes in through env.fetch
// The packages come from HF2OCI_NODE_CLIENTS (a folder with node_modules, scripts/test.sh).
import { createRequire } from "node:module";
import { mkdirSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { pathToFileURL } from "node:url";

const root = process.env.HF2OCI_NODE_CLIENTS ?? "/var/cache/hf2oci/node-clients";
const require = createRequire(join(root, "package.json"));
const load = async (name) => import(pathToFileURL(require.resolve(name)).href);
const [mode, url, repo, out, token] = process.argv.slice(2);

async function hub() {
  const { listFiles, downloadFile, fileExists } = await load("@huggingface/hub");
  const common = { repo, hubUrl: url, ...(token ? { accessToken: token } : {}) };
  const files = [];
  for await (const entry of listFiles({ ...common, recursive: true })) {
    if (entry.type === "file") files.push(entry.path);
  }
  for (const path of files) {
    const blob = await downloadFile({ ...common, path });
    const target = join(out, path);
    mkdirSync(dirname(target), { recursive: true });
    writeFileSync(target, Buffer.from(await blob.arrayBuffer()));
  }
  const exists = await fileExists({ ...common, path: files[0] });
  const missing = await fileExists({ ...common, path: "no/such/file.bin" });
  return { files, exists, missing };
}

async function transformers() {
  const { env, pipeline } = await load("@huggingface/transformers");
  env.remoteHost = url.endsWith("/") ? url : `${url}/`;
  env.allowLocalModels = false;
  env.cacheDir = out;
  if (token) {
    const plain = env.fetch;
    env.fetch = (resource, init = {}) => {
      const headers = new Headers(init.headers);
      headers.set("Authorization", `Bearer ${token}`);
      return plain(resource, { ...init, headers });
    };
  }
  const extract = await pipeline("feature-extraction", repo, { dtype: "fp32" });
  const output = await extract(["hello world", "serve answers from the registry"], {
    pooling: "mean",
    normalize: true,
  });
  return { embeddings: output.tolist() };
}

try {
  const result = mode === "hub" ? await hub() : await transformers();
  console.log(JSON.stringify(result));
} catch (e) {
  console.log(JSON.stringify({ error: String(e?.message ?? e), status: e?.statusCode ?? null }));
}
