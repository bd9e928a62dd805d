// "Export Adapter…": a run's final adapter to GGUF, Ollama files, a merged HF folder or ONNX,
// through the same core entry point as `lora-studio export`, run on a worker thread
// (exportInWorker.ts) so the extension host stays responsive. The format and the output folder
// are asked for unless the caller passes them (keybindings, other extensions, the tests).

import * as vscode from 'vscode';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { ExportAdapterResult, ExportFormat } from '../core/export/exportAdapter';
import type { Log } from './log';

export interface ExportCommandArgs {
  format?: ExportFormat;
  outDir?: string;
  dtype?: string;
}

export interface ExportContext {
  extensionUri: vscode.Uri;
  log: Log;
  workspaceDir: string | null;
}

/** run.json's model as written: absolute, or relative to the workspace (where training started), then to the run. */
function resolveModel(model: string, runDir: string, workspaceDir: string | null): string {
  if (path.isAbsolute(model)) return model;
  for (const base of [workspaceDir, runDir]) {
    if (base && fs.existsSync(path.join(base, model))) return path.join(base, model);
  }
  return path.resolve(workspaceDir ?? runDir, model);
}

/** Runs the export with a cancellable progress notification; undefined when cancelled or failed (the user was told). */
export async function exportRunAdapter(ctx: ExportContext, runDir: string, args: ExportCommandArgs = {}): Promise<ExportAdapterResult | undefined> {
  const { EXPORT_FORMATS, EXPORT_FORMAT_INFO } = await import('../core/export/exportAdapter');
  const { exportAdapterInWorker } = await import('./exportInWorker');
  const { ExportError } = await import('../core/export/hfModel');
  const { MergeError } = await import('../core/export/merge');
  const { RUN_FILES, readRunJson } = await import('../core/runs/runs');
  const run = readRunJson(runDir);
  if (!run || typeof run.model !== 'string') {
    void vscode.window.showErrorMessage(`LoRA Studio: ${runDir} has no readable run.json, so its model is unknown.`);
    return undefined;
  }
  const adapterDir = path.join(runDir, RUN_FILES.adapter);
  if (!fs.existsSync(path.join(adapterDir, 'adapter_model.safetensors'))) {
    void vscode.window.showWarningMessage(`LoRA Studio: ${path.basename(runDir)} has no final adapter yet. A run writes it when it completes; resume the run to finish it.`);
    return undefined;
  }
  const modelDir = resolveModel(run.model, runDir, ctx.workspaceDir);

  let format = args.format;
  if (format !== undefined && !(EXPORT_FORMATS as readonly string[]).includes(format)) {
    void vscode.window.showErrorMessage(`LoRA Studio: unknown export format "${format}" (one of ${EXPORT_FORMATS.join(', ')}).`);
    return undefined;
  }
  if (!format) {
    const pick = await vscode.window.showQuickPick(
      EXPORT_FORMATS.map((f) => ({ label: EXPORT_FORMAT_INFO[f].label, description: f, detail: EXPORT_FORMAT_INFO[f].detail, format: f })),
      { placeHolder: `Export the adapter of ${path.basename(runDir)} as…`, matchOnDescription: true, matchOnDetail: true });
    if (!pick) return undefined;
    format = pick.format;
  }
  let outDir = args.outDir;
  if (!outDir) {
    const picked = await vscode.window.showOpenDialog({
      canSelectFolders: true, canSelectFiles: false, canSelectMany: false, openLabel: 'Export Here',
      title: `Folder for the ${EXPORT_FORMAT_INFO[format].label} export`,
      defaultUri: vscode.Uri.file(ctx.workspaceDir ?? runDir),
    });
    if (!picked?.length) return undefined;
    outDir = picked[0].fsPath;
  }

  const label = EXPORT_FORMAT_INFO[format].label;
  const chosenFormat = format;
  const target = outDir;
  return vscode.window.withProgress({ location: vscode.ProgressLocation.Notification, title: `LoRA Studio: exporting ${label}`, cancellable: true },
    async (progress, token) => {
      let reported = 0;
      try {
        let runtimePath: string | undefined;
        if (EXPORT_FORMAT_INFO[chosenFormat].needsRuntime) {
          const { locateRuntime } = await import('../core/runtime/locate');
          runtimePath = (await locateRuntime({ setting: vscode.workspace.getConfiguration('loraStudio').get<string>('runtimePath', ''), root: ctx.extensionUri.fsPath })).path;
        }
        ctx.log.info(`export ${chosenFormat}: ${adapterDir} (model ${modelDir}) -> ${target}`);
        const r = await exportAdapterInWorker({
          format: chosenFormat, modelDir, adapterDir, outDir: target, dtype: args.dtype, runtimePath, token,
          onProgress: (p) => {
            // withProgress takes increments; the core reports the fraction done.
            const pct = Math.round(p.fraction * 100);
            progress.report({ message: p.message, increment: Math.max(0, pct - reported) });
            reported = Math.max(reported, pct);
          },
          onLog: (l) => ctx.log.runtime(l),
        });
        ctx.log.info(`export ${chosenFormat}: wrote ${r.files.join(', ')}`);
        void vscode.window.showInformationMessage(`LoRA Studio: exported ${label} to ${r.files[0]}`, 'Reveal').then((a) => {
          if (a) void vscode.commands.executeCommand('revealFileInOS', vscode.Uri.file(r.files[0]));
        });
        return r;
      } catch (e) {
        if (e instanceof MergeError && e.cancelled) {
          ctx.log.info(`export ${chosenFormat}: cancelled`);
          return undefined;
        }
        const err = e as Error & { hint?: string };
        // ExportError and MergeError already carry the hint in their message.
        const text = e instanceof ExportError || e instanceof MergeError || !err.hint ? err.message : `${err.message}. ${err.hint}`;
        ctx.log.error(`export ${chosenFormat}: ${text}`);
        void vscode.window.showErrorMessage(`LoRA Studio: export failed: ${text}`, 'Show Log').then((a) => {
          if (a) ctx.log.show();
        });
        return undefined;
      }
    });
}
