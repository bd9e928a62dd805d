// Models already in the user's Hugging Face cache, in huggingface_hub's layout:
//   $HF_HUB_CACHE or $HF_HOME/hub or ~/.cache/huggingface/hub
//     models--ORG--NAME/refs/main            (text: the commit hash)
//     models--ORG--NAME/snapshots/REV/...    (symlinks into ../../blobs/)
//     models--ORG--NAME/blobs/HASH
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

export interface CachedModel {
  /** "org/name". */
  repoId: string;
  revision: string;
  /** The snapshot folder: usable as a model folder. */
  path: string;
  /** Bytes of the snapshot's files (symlink targets). */
  sizeBytes: number;
  /** config.json architectures[0], or "" when unknown. */
  arch: string;
  modelType: string;
  hasSafetensors: boolean;
  hasTokenizer: boolean;
  /** Where the safetensors index lists shards, whether they are all present. */
  complete: boolean;
}

export function hfHubCacheDir(env: NodeJS.ProcessEnv = process.env): string {
  if (env.HF_HUB_CACHE) return env.HF_HUB_CACHE;
  if (env.HUGGINGFACE_HUB_CACHE) return env.HUGGINGFACE_HUB_CACHE;
  const home = env.HF_HOME ?? path.join(env.XDG_CACHE_HOME ?? path.join(os.homedir(), '.cache'), 'huggingface');
  return path.join(home, 'hub');
}

/** Folder name of a repo in the cache: "models--org--name". */
export function repoFolderName(repoId: string): string {
  return `models--${repoId.split('/').join('--')}`;
}

function snapshotToUse(repoDir: string): string | null {
  const snaps = path.join(repoDir, 'snapshots');
  let revs: string[];
  try {
    revs = fs.readdirSync(snaps).filter((r) => fs.statSync(path.join(snaps, r)).isDirectory());
  } catch {
    return null;
  }
  if (revs.length === 0) return null;
  try {
    const main = fs.readFileSync(path.join(repoDir, 'refs', 'main'), 'utf8').trim();
    if (revs.includes(main)) return main;
  } catch {
    // no refs/main (e.g. downloaded by revision): fall back to the newest snapshot
  }
  return revs.sort((a, b) => fs.statSync(path.join(snaps, b)).mtimeMs - fs.statSync(path.join(snaps, a)).mtimeMs)[0];
}

function folderSize(dir: string): number {
  let total = 0;
  for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, entry.name);
    try {
      const st = fs.statSync(p); // follows the snapshot's symlinks into blobs/
      total += st.isDirectory() ? folderSize(p) : st.size;
    } catch {
      // a dangling symlink: an interrupted download; it contributes nothing
    }
  }
  return total;
}

export function describeCachedSnapshot(repoId: string, revision: string, snap: string): CachedModel {
  let arch = '';
  let modelType = '';
  try {
    const cfg = JSON.parse(fs.readFileSync(path.join(snap, 'config.json'), 'utf8'));
    if (Array.isArray(cfg.architectures) && typeof cfg.architectures[0] === 'string') arch = cfg.architectures[0];
    if (typeof cfg.model_type === 'string') modelType = cfg.model_type;
  } catch {
    // no or unreadable config.json: listed with an unknown architecture
  }
  const files = fs.readdirSync(snap);
  const exists = (f: string) => { try { fs.statSync(path.join(snap, f)); return true; } catch { return false; } };
  const hasSafetensors = files.some((f) => f.endsWith('.safetensors') && exists(f));
  let complete = exists('config.json') && hasSafetensors;
  if (complete && exists('model.safetensors.index.json')) {
    try {
      const idx = JSON.parse(fs.readFileSync(path.join(snap, 'model.safetensors.index.json'), 'utf8'));
      complete = Object.values(idx.weight_map ?? {}).every((f) => typeof f === 'string' && exists(f));
    } catch {
      complete = false;
    }
  }
  return {
    repoId, revision, path: snap, sizeBytes: folderSize(snap), arch, modelType, hasSafetensors,
    hasTokenizer: exists('tokenizer.json'), complete,
  };
}

/** Lists the model repos in the cache (one entry each, at refs/main or the newest snapshot),
 *  sorted by repo id. A missing cache folder gives an empty list. */
export function listCachedModels(cacheDir: string = hfHubCacheDir()): CachedModel[] {
  let entries: string[];
  try {
    entries = fs.readdirSync(cacheDir);
  } catch {
    return [];
  }
  const out: CachedModel[] = [];
  for (const name of entries) {
    if (!name.startsWith('models--')) continue;
    const parts = name.slice('models--'.length).split('--');
    const repoId = parts.join('/');
    const repoDir = path.join(cacheDir, name);
    const rev = snapshotToUse(repoDir);
    if (!rev) continue;
    out.push(describeCachedSnapshot(repoId, rev, path.join(repoDir, 'snapshots', rev)));
  }
  return out.sort((a, b) => a.repoId.localeCompare(b.repoId));
}
