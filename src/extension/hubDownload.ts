// Downloads a model repository from the Hugging Face Hub into the shared HF cache layout
// (models--org--name/{blobs,snapshots,refs}) with @huggingface/hub, so Python tools and this
// extension share one copy. No `vscode` import: the caller reports progress.
// Files already in the cache are not fetched again, so a download that was interrupted
// resumes from the first file it had not finished.

import { downloadFileToCacheDir, listFiles } from '@huggingface/hub';
import * as fs from 'node:fs';
import * as path from 'node:path';

export interface DownloadProgress { file: string; bytes: number; totalBytes: number }

export interface HubDownloadOptions {
  repoId: string;
  revision?: string;
  cacheDir: string;
  accessToken?: string;
  /** Hub base URL; tests point it at a local server. */
  hubUrl?: string;
  signal?: AbortSignal;
  onProgress?: (p: DownloadProgress) => void;
}

/** The files a training run needs; other files in the repository (other weight formats, images) are skipped. */
export function isModelFile(p: string): boolean {
  const base = path.posix.basename(p);
  if (p.includes('/')) return false;
  return base === 'config.json' || base === 'generation_config.json' || base.endsWith('.safetensors') || base === 'model.safetensors.index.json'
    || base.startsWith('tokenizer') || base === 'special_tokens_map.json' || base === 'chat_template.jinja' || base === 'chat_template.json';
}

/** Downloads the repository's model files; returns the snapshot folder (a model folder). */
export async function downloadModel(o: HubDownloadOptions): Promise<string> {
  const revision = o.revision ?? 'main';
  const creds = o.accessToken ? { accessToken: o.accessToken } : {};
  const files: { path: string; size: number }[] = [];
  for await (const f of listFiles({ repo: { type: 'model', name: o.repoId }, revision, hubUrl: o.hubUrl, ...creds })) {
    if (f.type === 'file' && isModelFile(f.path)) files.push({ path: f.path, size: f.lfs?.size ?? f.size });
  }
  if (!files.some((f) => f.path === 'config.json')) {
    throw new Error(`${o.repoId} has no config.json at its top level; it is not a Transformers model repository`);
  }
  if (!files.some((f) => f.path.endsWith('.safetensors'))) {
    throw new Error(`${o.repoId} has no *.safetensors weights; LoRA Studio reads safetensors only`);
  }
  const totalBytes = files.reduce((s, f) => s + f.size, 0);
  let done = 0;
  let snapshotFile = '';
  for (const f of files) {
    if (o.signal?.aborted) throw new Error('download cancelled');
    let fileBytes = 0;
    // Count bytes as they stream in, through the fetch the library lets us supply.
    const countingFetch: typeof fetch = async (input, init) => {
      const res = await fetch(input, { ...init, signal: o.signal });
      if (!res.body || (init?.method ?? 'GET') !== 'GET') return res;
      const reader = res.body.getReader();
      const stream = new ReadableStream<Uint8Array>({
        async pull(controller) {
          const { done: end, value } = await reader.read();
          if (end) {
            controller.close();
            return;
          }
          fileBytes += value.byteLength;
          o.onProgress?.({ file: f.path, bytes: done + fileBytes, totalBytes });
          controller.enqueue(value);
        },
        cancel(reason) {
          return reader.cancel(reason);
        },
      });
      return new Response(stream, { status: res.status, statusText: res.statusText, headers: res.headers });
    };
    snapshotFile = await downloadFileToCacheDir({
      repo: { type: 'model', name: o.repoId }, path: f.path, revision, cacheDir: o.cacheDir, hubUrl: o.hubUrl, fetch: countingFetch, ...creds,
    });
    done += f.size;
    o.onProgress?.({ file: f.path, bytes: done, totalBytes });
  }
  const snapshot = path.dirname(snapshotFile);
  // huggingface_hub resolves a branch through refs/<branch>; write it so Python tools find
  // this snapshot as the repository's `main` too.
  if (!/^[0-9a-f]{40}$/.test(revision)) {
    const refs = path.join(path.dirname(path.dirname(snapshot)), 'refs');
    await fs.promises.mkdir(refs, { recursive: true });
    await fs.promises.writeFile(path.join(refs, revision), path.basename(snapshot));
  }
  return snapshot;
}
