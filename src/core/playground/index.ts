// The playground ("Try Adapter"): base vs base + adapter, side by side, on ONNX Runtime.
export { preparePlayground, PlaygroundError, folderStamp } from './prepare';
export type { PrepareOptions, PreparedModels } from './prepare';
export { PlaygroundSession, IncrementalDecoder, DEFAULT_SETTINGS, loadGenerator, cudaProviderInstalled } from './session';
export type { GenerationSettings, Side, SideResult, StreamCallbacks } from './session';
export { readPinnedPrompts, runPinnedPrompts, PINNED_PROMPTS_FILE, PINNED_OUTPUTS_FILE } from './pinned';
export type { PinnedOutput, PinnedOutputsFile } from './pinned';
export { runPinnedForRun } from './pinnedRun';
export type { PinnedRunOptions } from './pinnedRun';
