// Entry points for the extension and the CLI: GGUF (llama.cpp / Ollama) and ONNX export.
export { exportGguf, exportAdapterGguf, exportModelGguf, buildModelfile, readAdapter } from './ggufExport';
export type { ExportGgufOptions, ExportGgufResult, ExportProgress, ProgressCallback, GgufOutType, GgufModelOutType } from './ggufExport';
export { exportOnnx, onnxIoNames } from './onnx';
export type { OnnxExportOptions, OnnxExportResult } from './onnx';
export { ExportError } from './hfModel';
export { OnnxGenerator, pick } from './onnxGenerate';
export type { GenerateOptions, GeneratedToken } from './onnxGenerate';
export { mergeAdapter, MergeError } from './merge';
export type { MergeOptions, MergeResult, MergeDtype } from './merge';
export { exportAdapter, checkExportInputs, EXPORT_FORMATS, EXPORT_FORMAT_INFO } from './exportAdapter';
export type { ExportAdapterOptions, ExportAdapterResult, ExportFormat } from './exportAdapter';
