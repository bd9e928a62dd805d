// Data preparation throughput: a generated 100k-row chat dataset through prepareDataset
// (read, render with the model's chat template, tokenize, mask, write shards), printed as
// rows/s, tokens/s and peak heap, next to the raw tokenizer (encodeBatch on the same
// rendered texts) measured in the same run as the peer.
//   node out/test/bench/dataPrep.bench.js [rows] [style]
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Tokenizer } from 'tokenizers';
import { writeTinyTokenizer } from '../../src/core/fixtures/tinyTokenizer';
import { prepareDataset } from '../../src/core/dataset/prepare';
import { loadModelTokenizer, resolveTemplate } from '../../src/core/tokenize/modelTokenizer';

export interface DataPrepBenchResult {
  rows: number;
  tokens: number;
  trainedTokens: number;
  seconds: number;
  rowsPerSecond: number;
  tokensPerSecond: number;
  peakHeapMiB: number;
  datasetMiB: number;
  peerTokensPerSecond: number;
  style: string;
  vocabSize: number;
}

const WORDS = (
  'the a of to and in is it you that he was for on are with as his they be at one have this from or had by word but what some we can out other were all there when up use your how said an each she which do their time if will way about many then them write would like so these her long make thing see him two has look more day could go come did number sound no most people my over know water than call first who may down side been now find any new work part take get place made live where after back little only round man year came show every good me give our under name very through just form sentence great think say help low line differ turn cause much mean before move right boy old too same tell does set three want air well also play small end put home read hand port large spell add even land here must big high such follow act why ask men change went light kind off need house picture try us again animal point mother world near build self earth father'
).split(' ');

function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function sentence(r: () => number, words: number): string {
  const out: string[] = [];
  for (let i = 0; i < words; i++) out.push(WORDS[Math.floor(r() * WORDS.length)]);
  const s = out.join(' ');
  return s[0].toUpperCase() + s.slice(1) + (r() < 0.2 ? '?' : '.');
}

/** Chats of 1-3 exchanges, a system prompt in a third of them, answers longer than questions. */
export function writeChatDataset(file: string, rows: number, seed = 1): void {
  const r = rng(seed);
  const fd = fs.openSync(file, 'w');
  let buf: string[] = [];
  for (let i = 0; i < rows; i++) {
    const messages: { role: string; content: string }[] = [];
    if (r() < 0.33) messages.push({ role: 'system', content: sentence(r, 8 + Math.floor(r() * 8)) });
    const turns = 1 + Math.floor(r() * 3);
    for (let t = 0; t < turns; t++) {
      messages.push({ role: 'user', content: sentence(r, 6 + Math.floor(r() * 14)) });
      messages.push({ role: 'assistant', content: `${sentence(r, 10 + Math.floor(r() * 30))} ${sentence(r, 5 + Math.floor(r() * 20))}` });
    }
    buf.push(JSON.stringify({ messages }));
    if (buf.length === 1000) {
      fs.writeSync(fd, buf.join('\n') + '\n');
      buf = [];
    }
  }
  if (buf.length) fs.writeSync(fd, buf.join('\n') + '\n');
  fs.closeSync(fd);
}

export async function runDataPrepBench(rows = 100_000, style: 'llama3' | 'chatml' | 'mistral' | 'gemma' = 'llama3'): Promise<DataPrepBenchResult> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bench-dataprep-'));
  try {
    const modelDir = path.join(dir, 'model');
    const r = rng(7);
    const corpus = Array.from({ length: 400 }, () => sentence(r, 20));
    const info = writeTinyTokenizer(modelDir, { style, corpus, vocabSize: 2048 });
    const data = path.join(dir, 'chat.jsonl');
    writeChatDataset(data, rows);
    const datasetMiB = fs.statSync(data).size / (1 << 20);

    let peakHeap = process.memoryUsage().heapUsed;
    const sample = () => {
      const h = process.memoryUsage().heapUsed;
      if (h > peakHeap) peakHeap = h;
    };
    const timer = setInterval(sample, 20);
    const t0 = process.hrtime.bigint();
    const res = await prepareDataset({
      data,
      modelDir,
      outDir: path.join(dir, 'out'),
      seqLen: 2048,
      foldSystemIntoUser: style === 'gemma' || style === 'mistral',
      onProgress: sample,
    });
    const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
    clearInterval(timer);
    sample();

    // Peer: the tokenizer alone on the same rendered texts (the ceiling for this pipeline).
    const tok = await loadModelTokenizer(modelDir);
    const { template } = resolveTemplate(tok, 'model');
    const lines = fs.readFileSync(data, 'utf8').split('\n').filter(Boolean).slice(0, Math.min(rows, 20000));
    const texts = lines.map((l) => {
      const msgs = JSON.parse(l).messages;
      if (style === 'gemma' || style === 'mistral') {
        if (msgs[0].role === 'system') {
          const sys = msgs.shift();
          msgs[0] = { role: 'user', content: `${sys.content}\n\n${msgs[0].content}` };
        }
      }
      return template.render(msgs, false);
    });
    const raw = Tokenizer.fromFile(path.join(modelDir, 'tokenizer.json'));
    const p0 = process.hrtime.bigint();
    let peerTokens = 0;
    for (let i = 0; i < texts.length; i += 512) {
      const encs = await raw.encodeBatch(texts.slice(i, i + 512), { addSpecialTokens: false });
      for (const e of encs) peerTokens += e.getLength();
    }
    const peerSeconds = Number(process.hrtime.bigint() - p0) / 1e9;

    const tokens = res.summary.train.tokens + (res.summary.eval?.tokens ?? 0);
    return {
      rows: res.summary.rows.train + res.summary.rows.eval,
      tokens,
      trainedTokens: res.summary.train.trainedTokens,
      seconds,
      rowsPerSecond: (res.summary.rows.train + res.summary.rows.eval) / seconds,
      tokensPerSecond: tokens / seconds,
      peakHeapMiB: peakHeap / (1 << 20),
      datasetMiB,
      peerTokensPerSecond: peerTokens / peerSeconds,
      style,
      vocabSize: info.vocabSize,
    };
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

export function formatDataPrepBench(b: DataPrepBenchResult): string {
  const cpus = os.cpus();
  return [
    `data preparation (${b.style} template, vocab ${b.vocabSize}, seq_len 2048) on ${cpus.length} x ${cpus[0]?.model ?? 'cpu'}, node ${process.version}`,
    `  ${b.rows} rows (${b.datasetMiB.toFixed(1)} MiB JSONL), ${b.tokens} tokens (${b.trainedTokens} trained) in ${b.seconds.toFixed(2)} s`,
    `  ${Math.round(b.rowsPerSecond)} rows/s, ${Math.round(b.tokensPerSecond)} tokens/s, peak heap ${b.peakHeapMiB.toFixed(0)} MiB`,
    `  peer (encodeBatch alone on the rendered texts): ${Math.round(b.peerTokensPerSecond)} tokens/s; pipeline/peer = ${(b.tokensPerSecond / b.peerTokensPerSecond).toFixed(2)}`,
  ].join('\n');
}

if (require.main === module) {
  const rows = Number(process.argv[2] ?? 100_000);
  const style = (process.argv[3] ?? 'llama3') as 'llama3';
  runDataPrepBench(rows, style).then(
    (b) => {
      console.log(formatDataPrepBench(b));
      console.log(JSON.stringify({ bench: 'dataPrep', ...b }));
    },
    (e) => {
      console.error(e);
      process.exitCode = 1;
    },
  );
}
