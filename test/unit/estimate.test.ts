import { test } from 'node:test';
import assert from 'node:assert/strict';
import { CPU_PROCESS_BYTES, CUDA_CONTEXT_RESERVE_BYTES, EstimateInput, allocatorRounded, deviceLinearBytes, estimateMemory, logitsChunkTokens, quantBytesPerElement } from '../../src/core/estimate';
import { LORA_TARGETS } from '../../src/core/config';

// Llama-2-7B's shapes (config.json of meta-llama/Llama-2-7b-hf).
function llama7b(): EstimateInput['model'] {
  const L = 32, H = 4096, I = 11008, V = 32000;
  const t = (name: string, inF: number, outF: number) => ({ name, inFeatures: inF, outFeatures: outF, layers: L, params: L * inF * outF });
  const targets = [t('q_proj', H, H), t('k_proj', H, H), t('v_proj', H, H), t('o_proj', H, H), t('gate_proj', H, I), t('up_proj', H, I), t('down_proj', I, H)];
  return {
    layers: L, hidden: H, intermediate: I, heads: 32, kvHeads: 32, headDim: 128, vocab: V, targets,
    paramsLinear: targets.reduce((s, x) => s + x.params, 0), paramsOther: 2 * V * H + (2 * L + 1) * H, dtype: 'BF16',
  };
}

function input(over: Partial<EstimateInput> = {}): EstimateInput {
  return {
    model: llama7b(),
    lora: { r: 16, targets: [...LORA_TARGETS], dropout: 0.05 },
    quant: { type: 'nf4', doubleQuant: true, blockSize: 64 },
    train: { seqLen: 2048, microBatch: 1, gradCheckpointing: true, optimizer: 'adamw' },
    device: 'cuda',
    dtype: 'bf16',
    ...over,
  };
}

const GiB = 2 ** 30;

test('estimate: bytes per element of each quantization, with absmax and double quant', () => {
  assert.equal(quantBytesPerElement('none', false, 64, 2), 2);
  assert.equal(quantBytesPerElement('nf4', false, 64, 2), 0.5 + 4 / 64);
  assert.equal(quantBytesPerElement('nf4', true, 64, 2), 0.5 + 1 / 64 + 4 / (256 * 64));
  assert.equal(quantBytesPerElement('fp4', true, 64, 2), quantBytesPerElement('nf4', true, 64, 2));
  assert.equal(quantBytesPerElement('int8', false, 64, 2), 1 + 4 / 64);
});

test('estimate: QLoRA on a 7B Llama lands where QLoRA practice puts it', () => {
  const e = estimateMemory(input());
  // 40.0M trainable params: r × (in + out) summed over 7 modules and 32 layers
  assert.equal(e.trainableParams, 32 * 16 * (4 * 8192 + 2 * (4096 + 11008) + (11008 + 4096)));
  const part = (k: string) => e.parts.find((p) => p.key === k)!.bytes;
  // 6.48B linear params at 4.13 bits
  assert.ok(part('base_linear') > 3.0 * GiB && part('base_linear') < 3.2 * GiB, `${part('base_linear') / GiB}`);
  // On the GPU: fp32 weights, gradients, 2 moments and a bf16 copy, each array rounded up
  // to the allocator's 2 MiB steps (device_lora_allocated_bytes).
  const P = e.trainableParams;
  assert.equal(part('lora'), 4 * allocatorRounded(P * 4) + allocatorRounded(P * 2));
  assert.ok(part('lora') - P * 18 < 5 * 2 * 2 ** 20);
  assert.ok(e.totalBytes > 5 * GiB && e.totalBytes < 9 * GiB, `total ${e.totalBytes / GiB} GiB`);
  assert.equal(e.totalBytes, e.parts.reduce((s, p) => s + p.bytes, 0));
  const none = estimateMemory(input({ quant: { type: 'none', doubleQuant: false, blockSize: 64 } }));
  assert.ok(none.totalBytes > 13 * GiB, 'bf16 base alone is ~13 GB');
  assert.ok(none.baseBytesQuantized === none.baseBytesUnquantized);
  assert.ok(e.baseBytesQuantized < e.baseBytesUnquantized / 3, 'NF4 shrinks the base more than 3x');
});

test('estimate: checkpointing, micro-batch, sequence length, optimizer and device move the right parts', () => {
  const base = estimateMemory(input());
  const noCkpt = estimateMemory(input({ train: { seqLen: 2048, microBatch: 1, gradCheckpointing: false, optimizer: 'adamw' } }));
  const act = (e: ReturnType<typeof estimateMemory>) => e.parts.find((p) => p.key === 'activations')!.bytes;
  assert.equal(act(noCkpt), base.activationsWithoutCheckpointing);
  // One layer's activations instead of 32; the 33 fp32 layer inputs stay either way (without offload).
  assert.ok(act(noCkpt) > 8 * act(base), `${act(noCkpt) / act(base)}`);
  const mb2 = estimateMemory(input({ train: { seqLen: 2048, microBatch: 2, gradCheckpointing: true, optimizer: 'adamw' } }));
  // Twice the tokens, up to the allocator's rounding of each buffer.
  assert.ok(Math.abs(act(mb2) / act(base) - 2) < 0.01, `${act(mb2) / act(base)}`);
  const sgd = estimateMemory(input({ train: { seqLen: 2048, microBatch: 1, gradCheckpointing: true, optimizer: 'sgd' } }));
  const loraOf = (e: ReturnType<typeof estimateMemory>) => e.parts.find((p) => p.key === 'lora')!.bytes;
  // The CUDA engine allocates the AdamW moments whatever the optimizer; the CPU path does not count them for SGD.
  assert.equal(loraOf(sgd), loraOf(base));
  const cpuSgd = estimateMemory(input({ device: 'cpu', train: { seqLen: 2048, microBatch: 1, gradCheckpointing: true, optimizer: 'sgd' } }));
  assert.equal(loraOf(cpuSgd) * 2, loraOf(estimateMemory(input({ device: 'cpu' }))));
  const noDropout = { r: 16, targets: [...LORA_TARGETS], dropout: 0 };
  const cpu = estimateMemory(input({ device: 'cpu', lora: noDropout }));
  assert.equal(cpu.parts.find((p) => p.key === 'overhead')!.bytes, CPU_PROCESS_BYTES);
  assert.ok(base.parts.find((p) => p.key === 'overhead')!.bytes > CUDA_CONTEXT_RESERVE_BYTES, 'the context reserve and the GEMM workspace');
  assert.ok(act(cpu) > act(estimateMemory(input({ lora: noDropout }))), 'CPU keeps fp32 activations, the GPU bf16 ones');
  assert.ok(act(base) > act(estimateMemory(input({ lora: noDropout }))), 'dropout copies cost memory');
  const attnOnly = estimateMemory(input({ lora: { r: 16, targets: ['q_proj', 'v_proj'], dropout: 0 } }));
  assert.equal(attnOnly.trainableParams, 32 * 16 * 2 * 8192);
});

test('estimate: logits are chunked to about 16 MiB', () => {
  assert.equal(logitsChunkTokens(32000, 4096), 131);
  assert.equal(logitsChunkTokens(400, 4096), 1024);
  assert.equal(logitsChunkTokens(400, 10), 10);
  assert.equal(logitsChunkTokens(1e9, 10), 1);
});

test('estimate (CUDA): offload keeps 2 layer inputs on the GPU instead of L + 1, only with checkpointing', () => {
  const act = (e: ReturnType<typeof estimateMemory>) => e.parts.find((p) => p.key === 'activations')!.bytes;
  const T = 2048, C = 4096, L = 32;
  const on = estimateMemory(input({ offloadActivations: true }));
  assert.equal(act(estimateMemory(input())) - act(on), (L + 1 - 2) * allocatorRounded(T * C * 4));
  assert.equal(on.activationsWithCheckpointing, act(on));
  const full = input({ train: { seqLen: T, microBatch: 1, gradCheckpointing: false, optimizer: 'adamw' } });
  assert.equal(act(estimateMemory({ ...full, offloadActivations: true })), act(estimateMemory(full)));
});

test('estimate (CUDA): quantized weights as the runtime stores them, per matrix', () => {
  const q = (type: 'none' | 'nf4' | 'int8', doubleQuant: boolean) => ({ type, doubleQuant, blockSize: 64 });
  // Each array of upload_quantized at its allocator size class (512 B steps below 1 MiB).
  assert.equal(deviceLinearBytes(100, q('none', false)), 512);
  // 100 elements: 50 code bytes, 2 blocks (the last one partial).
  assert.equal(deviceLinearBytes(100, q('nf4', false)), 512 + 512);
  assert.equal(deviceLinearBytes(100, q('nf4', true)), 3 * 512);
  // Llama-2-7B's up_proj, nf4 + double quant: 21.5 MiB of codes in a 22 MiB block, 704,512
  // uint8 absmax (a multiple of 512), 2,752 fp32 scales.
  assert.equal(deviceLinearBytes(4096 * 11008, q('nf4', true)), 22 * 2 ** 20 + 704512 + 11264);
  assert.equal(deviceLinearBytes(4096 * 4096, q('none', false)), 32 * 2 ** 20);
  assert.equal(allocatorRounded(1), 512);
  assert.equal(allocatorRounded(2 ** 20 - 1), 2 ** 20);
  assert.equal(allocatorRounded(2 ** 20), 2 * 2 ** 20);
});
