// Pinned prompts: a workspace file (.lora-studio/pinned-prompts.json, an array of strings)
// run against an adapter, with both columns' answers kept beside the run
// (RUN_DIR/playground/pinned-outputs.json) so runs can be compared by what they answer.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { jsonErrorPosition } from '../dataset/readers';
import { PlaygroundError } from './prepare';
import type { GenerationSettings, PlaygroundSession, SideResult } from './session';
import { writeJsonAtomic } from '../util/atomicWrite';

export const PINNED_PROMPTS_FILE = path.join('.lora-studio', 'pinned-prompts.json');
export const PINNED_OUTPUTS_FILE = path.join('playground', 'pinned-outputs.json');
const MAX_PROMPTS = 200;

/** The workspace's pinned prompts; [] when the file does not exist. */
export function readPinnedPrompts(workspaceDir: string): string[] {
  const file = path.join(workspaceDir, PINNED_PROMPTS_FILE);
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8').replace(/^\uFEFF/, '');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw new PlaygroundError(`${file}: cannot be read: ${(e as Error).message}`);
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (e) {
    const pos = jsonErrorPosition(e, text);
    throw new PlaygroundError(`${file}:${pos.lineOffset + 1}:${pos.column}: not valid JSON (${pos.message})`, 'write an array of prompt strings, e.g. ["Summarise ...", "Translate ..."]');
  }
  if (!Array.isArray(value)) throw new PlaygroundError(`${file}: expected an array of prompt strings, found ${value === null ? 'null' : typeof value}`, 'write e.g. ["first prompt", "second prompt"]');
  if (value.length > MAX_PROMPTS) throw new PlaygroundError(`${file}: ${value.length} prompts; at most ${MAX_PROMPTS} are run`, 'keep the prompts that tell adapters apart');
  return value.map((p, i) => {
    if (typeof p !== 'string' || !p.trim()) throw new PlaygroundError(`${file}: item [${i}] is not a non-empty string`, 'every item is one prompt, as a JSON string');
    return p;
  });
}

export interface PinnedOutput {
  prompt: string;
  base: { text: string; tokens: number; stop: SideResult['stopReason'] };
  adapter: { text: string; tokens: number; stop: SideResult['stopReason'] };
}

export interface PinnedOutputsFile {
  v: 1;
  created_at: string;
  adapter: string;
  settings: GenerationSettings;
  outputs: PinnedOutput[];
}

/** Generates both columns for every prompt and writes RUN_DIR/playground/pinned-outputs.json. */
export async function runPinnedPrompts(opts: {
  session: PlaygroundSession;
  prompts: readonly string[];
  runDir: string;
  adapterDir: string;
  settings: GenerationSettings;
  onPrompt?: (index: number, output: PinnedOutput) => void;
  cancelled?: () => boolean;
}): Promise<{ file: string; outputs: PinnedOutput[] }> {
  const outputs: PinnedOutput[] = [];
  // Pinned runs compare adapters, so they are reproducible: a fixed seed for every prompt.
  const settings: GenerationSettings = { ...opts.settings, seed: opts.settings.seed ?? 0 };
  for (const [i, prompt] of opts.prompts.entries()) {
    if (opts.cancelled?.()) break;
    const r = await opts.session.generate(prompt, settings, {}, opts.cancelled);
    const out: PinnedOutput = {
      prompt,
      base: { text: r.base.text, tokens: r.base.tokens, stop: r.base.stopReason },
      adapter: { text: r.adapter.text, tokens: r.adapter.tokens, stop: r.adapter.stopReason },
    };
    outputs.push(out);
    opts.onPrompt?.(i, out);
  }
  const file = path.join(opts.runDir, PINNED_OUTPUTS_FILE);
  const content: PinnedOutputsFile = { v: 1, created_at: new Date().toISOString(), adapter: path.resolve(opts.adapterDir), settings, outputs };
  writeJsonAtomic(file, content);
  return { file, outputs };
}
