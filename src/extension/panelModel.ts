// Translations between the core types and the panel's message shapes. No `vscode` import:
// the panel's view of a config, a model, an estimate is computed here and tested headless.

import { PRESETS, applyPreset, defaultConfig, findPreset, mergeConfig, validateConfig, type ConfigIssue, type TrainConfig } from '../core/config';
import { estimateMemory, gpuCanTrain } from '../core/estimate';
import type { ModelInspection } from '../core/model/inspect';
import type { CachedModel as CoreCachedModel } from '../core/model/hfCache';
import type { CachedModel, DeviceInfo, EstimateInfo, ModelSummary, PanelConfig, PresetInfo } from '../../webview/protocol';

export const DEFAULT_PRESET = 'qlora-default';

/** The form's view of a TrainConfig. */
export function toPanelConfig(c: TrainConfig, preset: string): PanelConfig {
  return {
    model: c.model,
    data: c.data,
    preset,
    lora: { r: c.lora.r, alpha: c.lora.alpha, dropout: c.lora.dropout, rslora: c.lora.rslora, targets: [...c.lora.targets] },
    quant: { type: c.quant.type, doubleQuant: c.quant.doubleQuant },
    train: {
      lr: c.train.lr, schedule: c.train.schedule, warmupSteps: c.train.warmupSteps, epochs: c.train.epochs, maxSteps: c.train.maxSteps,
      seqLen: c.train.seqLen, microBatch: c.train.microBatch, gradAccum: c.train.gradAccum, evalSplit: c.dataOptions.evalSplit,
      gradCheckpointing: c.train.gradCheckpointing, saveEvery: c.train.saveEvery,
    },
  };
}

/** The preset's TrainConfig with the form's choices on top; fields the form lacks keep the preset's values. */
export function fromPanelConfig(p: PanelConfig): TrainConfig {
  const base = findPreset(p.preset) ? applyPreset(defaultConfig(), p.preset) : defaultConfig();
  return mergeConfig(base, {
    model: p.model,
    data: p.data,
    dataOptions: { evalSplit: p.train.evalSplit },
    lora: { r: p.lora.r, alpha: p.lora.alpha, dropout: p.lora.dropout, rslora: p.lora.rslora, targets: [...p.lora.targets] },
    quant: { type: p.quant.type, doubleQuant: p.quant.doubleQuant },
    train: {
      lr: p.train.lr, schedule: p.train.schedule, warmupSteps: p.train.warmupSteps, epochs: p.train.epochs, maxSteps: p.train.maxSteps,
      seqLen: p.train.seqLen, microBatch: p.train.microBatch, gradAccum: p.train.gradAccum, gradCheckpointing: p.train.gradCheckpointing,
      saveEvery: p.train.saveEvery,
    },
  });
}

export function presetInfos(): PresetInfo[] {
  return PRESETS.map((p) => ({ id: p.id, label: p.label, description: p.description, config: toPanelConfig(applyPreset(defaultConfig(), p.id), p.id) }));
}

/** The starting form: the chosen preset (falling back to the default one) and the default model folder. */
export function initialPanelConfig(presetId: string, modelFolder: string): PanelConfig {
  const id = findPreset(presetId) ? presetId : DEFAULT_PRESET;
  const c = applyPreset(defaultConfig(), id);
  c.model = modelFolder;
  return toPanelConfig(c, id);
}

export function modelSummary(m: ModelInspection): ModelSummary {
  return {
    path: m.dir, arch: m.architecture, layers: m.layers, hidden: m.hidden, paramsTotal: m.paramsTotal, sizeBytes: m.bytes,
    dtype: m.dtype, targets: m.targets.map((t) => t.name),
  };
}

export function cachedModelInfo(m: CoreCachedModel): CachedModel {
  return { path: m.path, repoId: m.repoId, arch: m.arch || m.modelType || 'unknown', sizeBytes: m.sizeBytes };
}

/** The memory estimate for the form's settings on the device the run will use (the CPU when
 *  there is no GPU, or when the GPU path cannot train this model). */
export function estimateInfo(model: ModelInspection, c: TrainConfig, device: DeviceInfo | null): EstimateInfo {
  const onGpu = device?.kind === 'cuda' && c.compute.device !== 'cpu' && gpuCanTrain(model);
  const e = estimateMemory({
    model,
    lora: { r: c.lora.r, targets: c.lora.targets, dropout: c.lora.dropout },
    quant: { type: c.quant.type, doubleQuant: c.quant.doubleQuant, blockSize: c.quant.blockSize },
    train: { seqLen: c.train.seqLen, microBatch: c.train.microBatch, gradCheckpointing: c.train.gradCheckpointing, optimizer: c.train.optimizer },
    device: onGpu ? 'cuda' : 'cpu',
    dtype: c.compute.dtype,
    offloadActivations: c.compute.offloadActivations === true,
  });
  return {
    parts: e.parts.filter((p) => p.bytes > 0).map((p) => ({ label: p.label, bytes: p.bytes })),
    totalBytes: e.totalBytes,
    // On the CPU path the budget is free system memory.
    deviceName: device ? (onGpu ? device.name : `${device.kind === 'cpu' ? device.name : 'CPU'} (system memory)`) : null,
    deviceFreeBytes: device ? (onGpu || device.kind === 'cpu' ? device.memoryFree : null) : null,
    trainableParams: e.trainableParams,
    totalParams: e.totalParams,
  };
}

/** Config problems that block a start, as one message per field. */
export function blockingIssues(c: TrainConfig, model: ModelInspection | null): ConfigIssue[] {
  const issues = validateConfig(c, model ? { modelTargets: model.targets.map((t) => t.name) } : {});
  return issues.filter((i) => i.severity !== 'warning');
}
