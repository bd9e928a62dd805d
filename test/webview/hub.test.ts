// Model download from the Hub into the shared HF cache layout, against a local server that
// serves the Hub's routes (tree listing, paths-info, resolve with Range): nothing leaves
// the machine. Checks the files, the layout other tools read, progress, token use, and that
// an interrupted download resumes without fetching finished files again.

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { downloadModel, isModelFile, type DownloadProgress } from '../../src/extension/hubDownload';
import { listCachedModels } from '../../src/core/model/hfCache';

const COMMIT = 'c0ffee'.padEnd(40, '0');
const REPO = 'tiny-org/tiny-llama';

interface HubFile { path: string; data: Buffer; lfs: boolean }

function sha256(b: Buffer): string {
  return createHash('sha256').update(b).digest('hex');
}
function gitOid(b: Buffer): string {
  return createHash('sha1').update(`blob ${b.length}\0`).update(b).digest('hex');
}

class FakeHub {
  server!: Server;
  url = '';
  files: HubFile[];
  gets = new Map<string, number>();
  requireToken: string | null = null;
  /** Path whose next full download is cut off half-way (simulated network failure). */
  breakNext: string | null = null;

  constructor() {
    const weights = Buffer.alloc(300_000);
    for (let i = 0; i < weights.length; i++) weights[i] = (i * 7919) & 255;
    this.files = [
      { path: 'config.json', data: Buffer.from(JSON.stringify({ architectures: ['LlamaForCausalLM'], model_type: 'llama' })), lfs: false },
      { path: 'model.safetensors', data: weights, lfs: true },
      { path: 'tokenizer.json', data: Buffer.from('{"version":"1.0"}'), lfs: false },
      { path: 'README.md', data: Buffer.from('# tiny'), lfs: false },
      { path: 'onnx/model.onnx', data: Buffer.alloc(1000), lfs: true },
    ];
  }

  async start(): Promise<void> {
    this.server = createServer((req, res) => void this.handle(req, res));
    await new Promise<void>((r) => this.server.listen(0, '127.0.0.1', r));
    this.url = `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
  }

  close(): Promise<void> {
    this.server.closeAllConnections();
    return new Promise((r) => this.server.close(() => r()));
  }

  private entry(f: HubFile, withCommit: boolean): Record<string, unknown> {
    return {
      type: 'file', path: f.path, size: f.data.length, oid: gitOid(f.data),
      ...(f.lfs ? { lfs: { oid: sha256(f.data), size: f.data.length, pointerSize: 130 } } : {}),
      ...(withCommit ? { lastCommit: { id: COMMIT, title: 'upload', date: '2026-01-01T00:00:00.000Z' } } : {}),
    };
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const u = new URL(req.url ?? '/', this.url);
    if (this.requireToken && req.headers.authorization !== `Bearer ${this.requireToken}`) {
      res.writeHead(401, { 'content-type': 'application/json', 'x-error-message': 'Access to model tiny-org/tiny-llama is restricted.' });
      res.end(JSON.stringify({ error: 'Access to model tiny-org/tiny-llama is restricted.' }));
      return;
    }
    if (req.method === 'GET' && u.pathname === `/api/models/${REPO}/tree/main`) {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify(this.files.map((f) => this.entry(f, false))));
      return;
    }
    if (req.method === 'POST' && u.pathname === `/api/models/${REPO}/paths-info/main`) {
      let body = '';
      for await (const c of req) body += c;
      const wanted = (JSON.parse(body) as { paths: string[] }).paths;
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify(this.files.filter((f) => wanted.includes(f.path)).map((f) => this.entry(f, true))));
      return;
    }
    const m = new RegExp(`^/${REPO}/resolve/main/(.+)$`).exec(u.pathname);
    const f = m ? this.files.find((x) => x.path === decodeURIComponent(m[1]!)) : undefined;
    if (req.method === 'GET' && f) {
      const etag = `"${f.lfs ? sha256(f.data) : gitOid(f.data)}"`;
      const range = /^bytes=(\d+)-(\d*)$/.exec(String(req.headers.range ?? ''));
      const start = range ? Number(range[1]) : 0;
      const end = range && range[2] ? Math.min(Number(range[2]), f.data.length - 1) : f.data.length - 1;
      const isProbe = range !== null && start === 0 && end === 0;
      if (!isProbe) this.gets.set(f.path, (this.gets.get(f.path) ?? 0) + 1);
      const headers: Record<string, string | number> = { etag, 'x-repo-commit': COMMIT, 'content-type': 'application/octet-stream', 'content-length': end - start + 1 };
      if (range) headers['content-range'] = `bytes ${start}-${end}/${f.data.length}`;
      res.writeHead(range ? 206 : 200, headers);
      if (!isProbe && this.breakNext === f.path) {
        this.breakNext = null;
        res.write(f.data.subarray(start, start + Math.floor((end - start) / 2)));
        await new Promise((r) => setTimeout(r, 20));
        res.destroy();
        return;
      }
      res.end(f.data.subarray(start, end + 1));
      return;
    }
    res.writeHead(404, { 'x-error-code': 'EntryNotFound' });
    res.end('not found');
  }
}

describe('Hub download into the HF cache (local Hub stand-in)', () => {
  const hub = new FakeHub();
  let tmp: string;

  before(async () => {
    await hub.start();
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'lora-hub-'));
  });
  after(async () => {
    await hub.close();
    fs.rmSync(tmp, { recursive: true, force: true });
  });

  it('picks the files a training run needs', () => {
    assert.deepEqual(['config.json', 'model.safetensors', 'model-00001-of-00002.safetensors', 'tokenizer_config.json', 'README.md', 'onnx/model.onnx', 'pytorch_model.bin']
      .filter(isModelFile), ['config.json', 'model.safetensors', 'model-00001-of-00002.safetensors', 'tokenizer_config.json']);
  });

  it('downloads the model files into models--org--name/snapshots/COMMIT with progress', async () => {
    const cacheDir = path.join(tmp, 'cache1');
    const progress: DownloadProgress[] = [];
    const dir = await downloadModel({ repoId: REPO, cacheDir, hubUrl: hub.url, onProgress: (p) => progress.push(p) });
    assert.equal(dir, path.join(cacheDir, 'models--tiny-org--tiny-llama', 'snapshots', COMMIT));
    for (const f of hub.files.filter((x) => isModelFile(x.path))) {
      assert.deepEqual(fs.readFileSync(path.join(dir, f.path)), f.data, `${f.path} has the served bytes`);
      assert.ok(fs.lstatSync(path.join(dir, f.path)).isSymbolicLink(), `${f.path} links into blobs/ like huggingface_hub`);
    }
    assert.ok(!fs.existsSync(path.join(dir, 'README.md')), 'files a run does not need are skipped');
    assert.equal(fs.readFileSync(path.join(cacheDir, 'models--tiny-org--tiny-llama', 'refs', 'main'), 'utf8'), COMMIT, 'refs/main names the snapshot');
    const total = hub.files.filter((x) => isModelFile(x.path)).reduce((s, f) => s + f.data.length, 0);
    assert.equal(progress[progress.length - 1]!.bytes, total);
    assert.ok(progress.every((p) => p.totalBytes === total));
    assert.ok(progress.some((p) => p.file === 'model.safetensors' && p.bytes < total), 'progress is reported while the weights stream');
    const listed = listCachedModels(cacheDir);
    assert.equal(listed.length, 1, 'the core HF cache listing finds the downloaded model');
    assert.equal(listed[0]!.repoId, REPO);
  });

  it('resumes after an interrupted download without fetching finished files again', async () => {
    const cacheDir = path.join(tmp, 'cache2');
    hub.gets.clear();
    hub.breakNext = 'model.safetensors';
    await assert.rejects(downloadModel({ repoId: REPO, cacheDir, hubUrl: hub.url }));
    const afterFailure = new Map(hub.gets);
    const dir = await downloadModel({ repoId: REPO, cacheDir, hubUrl: hub.url });
    assert.deepEqual(fs.readFileSync(path.join(dir, 'model.safetensors')), hub.files[1]!.data, 'the weights are complete after the retry');
    assert.equal(hub.gets.get('config.json'), afterFailure.get('config.json'), 'config.json (finished before the failure) was not fetched again');
    assert.equal(hub.gets.get('model.safetensors'), (afterFailure.get('model.safetensors') ?? 0) + 1);
  });

  it('sends the access token and reports a gated repository clearly without one', async () => {
    hub.requireToken = 'hf_test_token';
    try {
      await assert.rejects(downloadModel({ repoId: REPO, cacheDir: path.join(tmp, 'cache3'), hubUrl: hub.url }), /restricted/);
      const dir = await downloadModel({ repoId: REPO, cacheDir: path.join(tmp, 'cache3'), hubUrl: hub.url, accessToken: 'hf_test_token' });
      assert.ok(fs.existsSync(path.join(dir, 'config.json')));
    } finally {
      hub.requireToken = null;
    }
  });
});
