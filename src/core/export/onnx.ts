// ONNX export of an HF Llama-family folder (base or merged) as a decoder graph with a KV cache,
// using only standard ai.onnx ops (opset 17) so any ONNX Runtime build runs it:
//   inputs   input_ids [batch, sequence] int64, attention_mask [batch, total_sequence] int64,
//            position_ids [batch, sequence] int64,
//            past_key_values.N.key / .value [batch, kv_heads, past_sequence, head_dim] float
//   outputs  logits [batch, sequence, vocab] float,
//            present.N.key / .value [batch, kv_heads, total_sequence, head_dim] float
// total_sequence = past_sequence + sequence. A query at cache index past+i attends keys at
// cache indices <= past+i whose attention_mask is 1. RoPE angles come from position_ids, so
// left padding works when position_ids skip the pads. Weights are fp32 initializers, stored
// pre-transposed ([in, out]) for MatMul; above ~2 GB they go to an external data file, since a
// protobuf message cannot exceed 2 GB.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ExportError, HfModel, openHfModel, scaledInvFreq, throwIfCancelled, transpose2d } from './hfModel';
import type { CancellationToken } from '../runtime/process';
import type { ProgressCallback } from './ggufExport';
import { OnnxAttrType, OnnxDataType, encodeModel } from './onnxProto';

export const ONNX_OPSET = 17;
/** IR version 8 is what opset 17 shipped with (ONNX 1.12). */
export const ONNX_IR_VERSION = 8;
/** Inline weights up to this many bytes; the protobuf hard limit is 2 GiB for the whole model. */
const INLINE_LIMIT = 1.8 * 1024 ** 3;

type Attr = { name: string; type: number; i?: number; f?: number; ints?: number[]; t?: Record<string, unknown> };
type Dim = number | string;

interface Initializer {
  name: string;
  dims: number[];
  data_type: number;
  raw_data?: Uint8Array;
  external_data?: { key: string; value: string }[];
  data_location?: number;
}

/** Collects nodes and initializers; weights go either inline or into one external data file. */
class GraphBuilder {
  readonly nodes: Record<string, unknown>[] = [];
  readonly initializers: Initializer[] = [];
  private counter = 0;
  private externalFd: number | null = null;
  private externalOffset = 0;

  constructor(private readonly external: { file: string; location: string } | null) {
    if (external) this.externalFd = fs.openSync(external.file, 'w');
  }

  close(): void {
    if (this.externalFd !== null) {
      fs.fsyncSync(this.externalFd);
      fs.closeSync(this.externalFd);
      this.externalFd = null;
    }
  }

  fresh(prefix: string): string {
    return `${prefix}_${this.counter++}`;
  }

  addInitializer(name: string, dims: number[], dataType: number, bytes: Uint8Array): string {
    const init: Initializer = { name, dims, data_type: dataType };
    // Small constants stay inline so the graph remains readable and the data file holds weights only.
    if (this.externalFd !== null && bytes.byteLength >= 1024) {
      // 64-byte aligned offsets let runtimes memory-map each tensor.
      const pad = (64 - (this.externalOffset % 64)) % 64;
      if (pad) fs.writeSync(this.externalFd, Buffer.alloc(pad));
      this.externalOffset += pad;
      let off = 0;
      while (off < bytes.byteLength) off += fs.writeSync(this.externalFd, bytes, off, bytes.byteLength - off);
      init.external_data = [
        { key: 'location', value: this.external!.location },
        { key: 'offset', value: String(this.externalOffset) },
        { key: 'length', value: String(bytes.byteLength) },
      ];
      init.data_location = 1;
      this.externalOffset += bytes.byteLength;
    } else {
      init.raw_data = bytes;
    }
    this.initializers.push(init);
    return name;
  }

  floats(name: string, dims: number[], values: Float32Array | number[]): string {
    const f = values instanceof Float32Array ? values : Float32Array.from(values);
    return this.addInitializer(name, dims, OnnxDataType.FLOAT, new Uint8Array(f.buffer.slice(f.byteOffset, f.byteOffset + f.byteLength)));
  }

  int64s(name: string, dims: number[], values: number[]): string {
    const b = new BigInt64Array(values.map((v) => BigInt(v)));
    return this.addInitializer(name, dims, OnnxDataType.INT64, new Uint8Array(b.buffer));
  }

  node(op: string, inputs: string[], attrs: Attr[] = [], outputs?: string[]): string[] {
    const outs = outputs ?? [this.fresh(op.toLowerCase())];
    this.nodes.push({ op_type: op, name: this.fresh(`n_${op}`), input: inputs, output: outs, attribute: attrs });
    return outs;
  }

  op(op: string, inputs: string[], attrs: Attr[] = [], output?: string): string {
    return this.node(op, inputs, attrs, output ? [output] : undefined)[0];
  }
}

const attrInt = (name: string, i: number): Attr => ({ name, type: OnnxAttrType.INT, i });
const attrInts = (name: string, ints: number[]): Attr => ({ name, type: OnnxAttrType.INTS, ints });

function valueInfo(name: string, elemType: number, dims: Dim[]): Record<string, unknown> {
  return {
    name,
    type: {
      tensor_type: {
        elem_type: elemType,
        shape: { dim: dims.map((d) => (typeof d === 'number' ? { dim_value: d } : { dim_param: d })) },
      },
    },
  };
}

export interface OnnxExportOptions {
  modelDir: string;
  /** Output folder; the graph is written as model.onnx (+ model.onnx.data). */
  outDir: string;
  /** 'auto' (default) stores weights externally when they exceed ~1.8 GB. */
  externalData?: 'auto' | 'always' | 'never';
  onProgress?: ProgressCallback;
  /** Checked before every layer and before the graph is encoded and written; a cancelled export leaves no file. */
  token?: CancellationToken;
}

export interface OnnxExportResult {
  file: string;
  dataFile: string | null;
  bytes: number;
  layers: number;
  kvHeads: number;
  headDim: number;
  vocab: number;
}

/** Input/output names, for callers that drive the graph (the playground, tests). */
export function onnxIoNames(layers: number): { pastKey: string[]; pastValue: string[]; presentKey: string[]; presentValue: string[] } {
  const r = (fmt: (i: number) => string) => Array.from({ length: layers }, (_, i) => fmt(i));
  return {
    pastKey: r((i) => `past_key_values.${i}.key`),
    pastValue: r((i) => `past_key_values.${i}.value`),
    presentKey: r((i) => `present.${i}.key`),
    presentValue: r((i) => `present.${i}.value`),
  };
}

export function exportOnnx(opts: OnnxExportOptions): OnnxExportResult {
  const model = openHfModel(opts.modelDir);
  const cfg = model.config;
  const outDir = path.resolve(opts.outDir);
  fs.mkdirSync(outDir, { recursive: true });
  const file = path.join(outDir, 'model.onnx');
  const dataName = 'model.onnx.data';
  const weightBytes = [...model.weights.tensors.values()].reduce((a, t) => a + (t.end - t.begin) * (t.dtype === 'F32' ? 1 : 2), 0);
  const mode = opts.externalData ?? 'auto';
  if (mode === 'never' && weightBytes > INLINE_LIMIT) {
    throw new ExportError(model.dir, undefined, `the fp32 weights take ${(weightBytes / 1e9).toFixed(2)} GB, more than one ONNX protobuf can hold`,
      'Use externalData "auto" or "always"');
  }
  const external = mode === 'always' || (mode === 'auto' && weightBytes > INLINE_LIMIT);
  const tmpData = path.join(outDir, `${dataName}.tmp-${process.pid}`);
  const g = new GraphBuilder(external ? { file: tmpData, location: dataName } : null);
  const checkCancelled = () => throwIfCancelled(opts.token, file);
  try {
    buildGraph(g, model, opts.onProgress, checkCancelled);
    checkCancelled();
  } catch (e) {
    g.close();
    fs.rmSync(tmpData, { force: true });
    throw e;
  }
  g.close();
  const io = onnxIoNames(cfg.layers);
  const kvDims: Dim[] = ['batch', cfg.kvHeads, 'past_sequence', cfg.headDim];
  const presentDims: Dim[] = ['batch', cfg.kvHeads, 'total_sequence', cfg.headDim];
  const inputs = [
    valueInfo('input_ids', OnnxDataType.INT64, ['batch', 'sequence']),
    valueInfo('attention_mask', OnnxDataType.INT64, ['batch', 'total_sequence']),
    valueInfo('position_ids', OnnxDataType.INT64, ['batch', 'sequence']),
  ];
  const outputs = [valueInfo('logits', OnnxDataType.FLOAT, ['batch', 'sequence', cfg.vocab])];
  for (let i = 0; i < cfg.layers; i++) {
    inputs.push(valueInfo(io.pastKey[i], OnnxDataType.FLOAT, kvDims), valueInfo(io.pastValue[i], OnnxDataType.FLOAT, kvDims));
    outputs.push(valueInfo(io.presentKey[i], OnnxDataType.FLOAT, presentDims), valueInfo(io.presentValue[i], OnnxDataType.FLOAT, presentDims));
  }
  opts.onProgress?.({ phase: 'onnx', fraction: 0.95, message: 'Encoding the graph' });
  const bytes = encodeModel({
    ir_version: ONNX_IR_VERSION,
    opset_import: [{ domain: '', version: ONNX_OPSET }],
    producer_name: 'lora-studio',
    producer_version: '1',
    graph: { name: 'decoder', node: g.nodes, initializer: g.initializers, input: inputs, output: outputs },
    metadata_props: [
      { key: 'lora_studio.arch', value: cfg.arch },
      { key: 'lora_studio.layers', value: String(cfg.layers) },
      { key: 'lora_studio.kv_heads', value: String(cfg.kvHeads) },
      { key: 'lora_studio.head_dim', value: String(cfg.headDim) },
      { key: 'lora_studio.vocab', value: String(cfg.vocab) },
      { key: 'lora_studio.eos_token_id', value: String(cfg.eosTokenId ?? '') },
    ],
  });
  const tmp = `${file}.tmp-${process.pid}`;
  // Encoding is one call; a cancel that came during it still stops the export before anything is written.
  if (opts.token?.isCancellationRequested) fs.rmSync(tmpData, { force: true });
  checkCancelled();
  fs.writeFileSync(tmp, bytes);
  if (external) fs.renameSync(tmpData, path.join(outDir, dataName));
  else fs.rmSync(path.join(outDir, dataName), { force: true });
  fs.renameSync(tmp, file);
  opts.onProgress?.({ phase: 'onnx', fraction: 1, message: `Wrote ${file}` });
  return {
    file, dataFile: external ? path.join(outDir, dataName) : null, bytes: bytes.byteLength,
    layers: cfg.layers, kvHeads: cfg.kvHeads, headDim: cfg.headDim, vocab: cfg.vocab,
  };
}

function buildGraph(g: GraphBuilder, model: HfModel, onProgress: ProgressCallback | undefined, checkCancelled: () => void): void {
  const cfg = model.config;
  const { hidden: E, heads: H, kvHeads: KV, headDim: D, intermediate: F, vocab: V } = cfg;
  const half = D / 2;
  const io = onnxIoNames(cfg.layers);

  const idx0 = g.int64s('const_idx0', [], [0]);
  const idx1 = g.int64s('const_idx1', [], [1]);
  const axes0 = g.int64s('const_axes0', [1], [0]);
  const axes1 = g.int64s('const_axes1', [1], [1]);
  const axes2 = g.int64s('const_axes2', [1], [2]);
  const axes12 = g.int64s('const_axes12', [2], [1, 2]);
  const axes3 = g.int64s('const_axes3', [1], [3]);
  const zeroF = g.floats('const_zero_f', [], [0]);
  // The most negative finite float, like transformers' causal mask: a fully masked row (a pad
  // query) then gets a uniform softmax instead of NaNs that would leak through 0 * NaN.
  const minF = g.floats('const_min_f', [], [-3.4028234663852886e38]);
  const epsF = g.floats('const_rms_eps', [], [cfg.rmsNormEps]);
  const scaleF = g.floats('const_attn_scale', [], [1 / Math.sqrt(D)]);

  // Attention bias [batch, 1, sequence, total_sequence], shared by every layer.
  const S = g.op('Gather', [g.op('Shape', ['input_ids']), idx1], [attrInt('axis', 0)]);
  const T = g.op('Gather', [g.op('Shape', ['attention_mask']), idx1], [attrInt('axis', 0)]);
  const P = g.op('Sub', [T, S]);
  const keyIdx = g.op('Range', [idx0, T, idx1]);
  const queryIdx = g.op('Range', [P, T, idx1]);
  const causal = g.op('LessOrEqual', [g.op('Unsqueeze', [keyIdx, axes0]), g.op('Unsqueeze', [queryIdx, axes1])]);
  const padOk = g.op('Unsqueeze', [g.op('Cast', ['attention_mask'], [attrInt('to', OnnxDataType.BOOL)]), axes12]);
  const allowed = g.op('And', [causal, padOk]);
  const attnBias = g.op('Where', [allowed, zeroF, minF]);

  // RoPE tables [batch, 1, sequence, head_dim] from position_ids (HF's rotate_half layout).
  const invFreq = g.floats('rope_inv_freq', [1, 1, half], scaledInvFreq(cfg));
  const pos = g.op('Unsqueeze', [g.op('Cast', ['position_ids'], [attrInt('to', OnnxDataType.FLOAT)]), axes2]);
  const freqs = g.op('Mul', [pos, invFreq]);
  const emb = g.op('Concat', [freqs, freqs], [attrInt('axis', -1)]);
  const cos = g.op('Unsqueeze', [g.op('Cos', [emb]), axes1]);
  const sin = g.op('Unsqueeze', [g.op('Sin', [emb]), axes1]);
  const sl0 = g.int64s('const_slice_0', [1], [0]);
  const slHalf = g.int64s('const_slice_half', [1], [half]);
  const slEnd = g.int64s('const_slice_end', [1], [D]);
  const rope = (x: string): string => {
    const x1 = g.op('Slice', [x, sl0, slHalf, axes3]);
    const x2 = g.op('Slice', [x, slHalf, slEnd, axes3]);
    const rotated = g.op('Concat', [g.op('Neg', [x2]), x1], [attrInt('axis', 3)]);
    return g.op('Add', [g.op('Mul', [x, cos]), g.op('Mul', [rotated, sin])]);
  };

  const rmsNorm = (x: string, weightName: string, initName: string): string => {
    const w = g.floats(initName, [E], model.read(weightName, [E]));
    const variance = g.op('ReduceMean', [g.op('Mul', [x, x])], [attrInts('axes', [-1]), attrInt('keepdims', 1)]);
    const inv = g.op('Reciprocal', [g.op('Sqrt', [g.op('Add', [variance, epsF])])]);
    return g.op('Mul', [g.op('Mul', [x, inv]), w]);
  };
  // y = x W^T (+ b), with W^T stored as [in, out].
  const linear = (x: string, hfName: string, out: number, inp: number, initName: string, bias: boolean): string => {
    const wT = g.floats(initName, [inp, out], transpose2d(model.read(`${hfName}.weight`, [out, inp]), out, inp));
    const y = g.op('MatMul', [x, wT]);
    return bias ? g.op('Add', [y, g.floats(`${initName}_bias`, [out], model.read(`${hfName}.bias`, [out]))]) : y;
  };
  const shapeHeads = g.int64s('const_shape_q', [4], [0, 0, H, D]);
  const shapeKvHeads = g.int64s('const_shape_kv', [4], [0, 0, KV, D]);
  const shapeMerge = g.int64s('const_shape_merge', [3], [0, 0, H * D]);
  const nRep = H / KV;
  const expandRep = g.int64s('const_expand_rep', [5], [1, 1, nRep, 1, 1]);
  const shapeRep = g.int64s('const_shape_rep', [4], [0, H, -1, D]);
  const repeatKv = (x: string): string => {
    if (nRep === 1) return x;
    return g.op('Reshape', [g.op('Expand', [g.op('Unsqueeze', [x, axes2]), expandRep]), shapeRep]);
  };
  const toHeads = (x: string, shape: string) => g.op('Transpose', [g.op('Reshape', [x, shape])], [attrInts('perm', [0, 2, 1, 3])]);

  const embed = g.floats('embed_tokens', [V, E], model.read('model.embed_tokens.weight', [V, E]));
  let x = g.op('Gather', [embed, 'input_ids'], [attrInt('axis', 0)]);
  for (let i = 0; i < cfg.layers; i++) {
    checkCancelled();
    onProgress?.({ phase: 'onnx', fraction: (0.9 * i) / cfg.layers, message: `Layer ${i + 1} of ${cfg.layers}` });
    const p = `model.layers.${i}`;
    const l = `layers.${i}`;
    const h = rmsNorm(x, `${p}.input_layernorm.weight`, `${l}.input_layernorm`);
    const q = rope(toHeads(linear(h, `${p}.self_attn.q_proj`, H * D, E, `${l}.q_proj`, cfg.qkvBias), shapeHeads));
    const k = rope(toHeads(linear(h, `${p}.self_attn.k_proj`, KV * D, E, `${l}.k_proj`, cfg.qkvBias), shapeKvHeads));
    const v = toHeads(linear(h, `${p}.self_attn.v_proj`, KV * D, E, `${l}.v_proj`, cfg.qkvBias), shapeKvHeads);
    const presentK = g.op('Concat', [io.pastKey[i], k], [attrInt('axis', 2)], io.presentKey[i]);
    const presentV = g.op('Concat', [io.pastValue[i], v], [attrInt('axis', 2)], io.presentValue[i]);
    const kT = g.op('Transpose', [repeatKv(presentK)], [attrInts('perm', [0, 1, 3, 2])]);
    const scores = g.op('Add', [g.op('Mul', [g.op('MatMul', [q, kT]), scaleF]), attnBias]);
    const probs = g.op('Softmax', [scores], [attrInt('axis', -1)]);
    const ctx = g.op('MatMul', [probs, repeatKv(presentV)]);
    const merged = g.op('Reshape', [g.op('Transpose', [ctx], [attrInts('perm', [0, 2, 1, 3])]), shapeMerge]);
    x = g.op('Add', [x, linear(merged, `${p}.self_attn.o_proj`, E, H * D, `${l}.o_proj`, false)]);

    const h2 = rmsNorm(x, `${p}.post_attention_layernorm.weight`, `${l}.post_attention_layernorm`);
    const gate = linear(h2, `${p}.mlp.gate_proj`, F, E, `${l}.gate_proj`, false);
    const up = linear(h2, `${p}.mlp.up_proj`, F, E, `${l}.up_proj`, false);
    const act = g.op('Mul', [g.op('Mul', [gate, g.op('Sigmoid', [gate])]), up]);
    x = g.op('Add', [x, linear(act, `${p}.mlp.down_proj`, E, F, `${l}.down_proj`, false)]);
  }
  const xn = rmsNorm(x, 'model.norm.weight', 'norm');
  if (model.has('lm_head.weight')) {
    const headT = g.floats('lm_head', [E, V], transpose2d(model.read('lm_head.weight', [V, E]), V, E));
    g.op('MatMul', [xn, headT], [], 'logits');
  } else if (cfg.tie) {
    // Tied: reuse the embedding table; ORT folds the Transpose once at session creation.
    g.op('MatMul', [xn, g.op('Transpose', [embed], [attrInts('perm', [1, 0])])], [], 'logits');
  } else {
    throw new ExportError(model.dir, 'lm_head.weight', 'is missing and tie_word_embeddings is false', 'The checkpoint is incomplete');
  }
}
