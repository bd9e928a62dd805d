// Which filesystem paths the panel may name. A webview is untrusted input: a path it sends is
// used only when the user picked it in a dialog, it lies inside an open workspace folder, or
// it is a model folder the extension itself listed (the Hugging Face cache). No `vscode`
// import, so the rules are tested headless.

import * as fs from 'node:fs';
import * as path from 'node:path';

function canonical(p: string): string | null {
  if (!path.isAbsolute(p) || p.includes('\0')) return null;
  try {
    return fs.realpathSync.native(p);
  } catch {
    return path.resolve(p);
  }
}

function isInside(child: string, parent: string): boolean {
  const rel = path.relative(parent, child);
  return rel === '' || (!rel.startsWith('..') && !path.isAbsolute(rel));
}

export class PathGuard {
  private readonly picked = new Set<string>();

  constructor(private readonly roots: () => readonly string[]) {}

  /** Records a path the user chose (dialog, explorer, setting) or the extension listed. */
  allow(p: string): void {
    const c = canonical(p);
    if (c) this.picked.add(c);
  }

  /**
   * Returns the canonical path when the panel may use it, else a reason. Symlinks are
   * resolved first, so a link inside the workspace cannot point the runtime elsewhere.
   */
  check(p: string, what: string): { ok: true; path: string } | { ok: false; reason: string } {
    const c = canonical(p);
    if (!c) return { ok: false, reason: `${what} "${p}" is not an absolute path` };
    if (this.picked.has(c)) return { ok: true, path: c };
    for (const root of this.roots()) {
      const r = canonical(root);
      if (r && isInside(c, r)) return { ok: true, path: c };
    }
    return { ok: false, reason: `${what} "${p}" was not chosen in LoRA Studio and is outside the workspace; pick it with Browse…` };
  }
}
