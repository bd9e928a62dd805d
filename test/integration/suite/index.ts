// Entry point VS Code calls for --extensionTestsPath: runs the mocha suite inside the
// extension host and writes a result file that test/integration/run.mjs reads (the
// extension host's console is not reliably visible from outside a browser-hosted VS Code).

import Mocha from 'mocha';
import * as fs from 'node:fs';
import * as path from 'node:path';

export interface SuiteResult { passed: string[]; failed: { title: string; error: string }[]; skipped: string[]; metrics: Record<string, number> }

export const metrics: Record<string, number> = {};

export function run(): Promise<void> {
  const out = process.env.LORA_STUDIO_IT_RESULTS;
  const mocha = new Mocha({ ui: 'bdd', timeout: 240_000, color: false, reporter: 'spec' });
  mocha.addFile(path.join(__dirname, 'extension.test.js'));
  const result: SuiteResult = { passed: [], failed: [], skipped: [], metrics };
  return new Promise((resolve, reject) => {
    const runner = mocha.run((failures) => {
      if (out) fs.writeFileSync(out, JSON.stringify(result, null, 2));
      if (failures) reject(new Error(`${failures} integration tests failed`));
      else resolve();
    });
    runner.on('pass', (t) => result.passed.push(t.fullTitle()));
    runner.on('fail', (t, err: Error) => result.failed.push({ title: t.fullTitle(), error: String(err?.stack ?? err) }));
    runner.on('pending', (t) => result.skipped.push(t.fullTitle()));
  });
}
