import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { readRecords, SourceRecord, detectFileKind, DatasetFileError } from '../../src/core/dataset/readers';
import { Diagnostic, DiagnosticSink, formatDiagnostic } from '../../src/core/dataset/diagnostics';
import { convertRecord, detectRowFormat, foldSystemIntoUser, FormatResolver } from '../../src/core/dataset/formats';
import { ExampleReader, ExampleRow } from '../../src/core/dataset/pipeline';
import { readLineBatches } from '../../src/core/dataset/lines';

function tmpFile(name: string, content: string | Buffer): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dataset-test-'));
  const file = path.join(dir, name);
  fs.writeFileSync(file, content);
  return file;
}

async function readAll(file: string, chunkSize?: number): Promise<{ records: SourceRecord[]; problems: Diagnostic[] }> {
  const records: SourceRecord[] = [];
  const problems: Diagnostic[] = [];
  for await (const b of readRecords(file, { chunkSize })) {
    records.push(...b.records);
    problems.push(...b.problems);
  }
  return { records, problems };
}

async function examples(file: string, format: 'auto' | 'messages' | 'alpaca' | 'prompt_completion' | 'text' = 'auto') {
  const sink = new DiagnosticSink();
  const reader = new ExampleReader(file, { format, sink });
  const rows: ExampleRow[] = [];
  for await (const b of reader.batches()) rows.push(...b.rows);
  return { rows, diagnostics: sink.list(), stats: reader.stats, format: reader.resolvedFormat() };
}

test('jsonl: rows with line numbers; bad JSON reported with line and column, other rows kept', async () => {
  const file = tmpFile('d.jsonl', '{"text": "a"}\n\n{"text": "b"\n{"text": "c"}\r\n   \n{"text": "d"}');
  const { records, problems } = await readAll(file);
  assert.deepEqual(records.map((r) => [r.row, r.line, (r.value as { text: string }).text]), [
    [1, 1, 'a'],
    [3, 4, 'c'],
    [4, 6, 'd'],
  ]);
  assert.equal(problems.length, 1);
  assert.equal(problems[0].code, 'bad-json');
  assert.equal(problems[0].line, 3);
  assert.equal(problems[0].row, 2);
  assert.equal(problems[0].column, 13, 'column of the end of the broken object');
  assert.match(formatDiagnostic(problems[0]), /d\.jsonl:3:13: error: invalid JSON/);
});

test('jsonl: small read chunks split lines anywhere and still give the same rows', async () => {
  const lines = Array.from({ length: 200 }, (_, i) => JSON.stringify({ text: `row ${i} ünïcödé 😀 ${'x'.repeat(i % 17)}` }));
  const file = tmpFile('d.jsonl', lines.join('\n') + '\n');
  const { records, problems } = await readAll(file, 7);
  assert.equal(problems.length, 0);
  assert.equal(records.length, 200);
  assert.equal((records[199].value as { text: string }).text, JSON.parse(lines[199]).text);
  assert.equal(records[150].line, 151);
});

test('BOM is skipped; UTF-16 files and invalid UTF-8 lines are diagnosed', async () => {
  const bom = tmpFile('bom.jsonl', Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), Buffer.from('{"text": "hi"}\n')]));
  const a = await readAll(bom);
  assert.equal(a.problems.length, 0);
  assert.equal((a.records[0].value as { text: string }).text, 'hi');

  const utf16 = tmpFile('u16.jsonl', Buffer.concat([Buffer.from([0xff, 0xfe]), Buffer.from('{"text": "hi"}\n', 'utf16le')]));
  const b = await readAll(utf16);
  assert.equal(b.records.length, 0);
  assert.equal(b.problems[0].code, 'utf16-file');
  assert.match(b.problems[0].message, /UTF-16 LE/);

  const latin1 = tmpFile('l1.jsonl', Buffer.concat([Buffer.from('{"text": "ok"}\n{"text": "caf'), Buffer.from([0xe9]), Buffer.from('"}\n{"text": "fine"}\n')]));
  const c = await readAll(latin1);
  assert.deepEqual(c.records.map((r) => (r.value as { text: string }).text), ['ok', 'fine']);
  assert.equal(c.problems.length, 1);
  assert.equal(c.problems[0].code, 'bad-encoding');
  assert.equal(c.problems[0].line, 2);
  assert.equal(c.problems[0].column, 14);
  assert.match(c.problems[0].hint!, /UTF-8/);
  assert.equal(c.records[1].row, 3, 'the undecodable line still counts as a row');
});

test('empty file and missing file', async () => {
  const empty = tmpFile('e.jsonl', '');
  const a = await readAll(empty);
  assert.equal(a.problems[0].code, 'file-empty');
  const blank = tmpFile('b.jsonl', '\n\n  \n');
  assert.equal((await readAll(blank)).problems[0].code, 'file-empty');
  await assert.rejects(readAll(path.join(os.tmpdir(), 'does-not-exist-123.jsonl')), (e: unknown) => {
    assert.ok(e instanceof DatasetFileError);
    assert.equal(e.diagnostic.code, 'file-not-found');
    return true;
  });
  await assert.rejects(readAll(os.tmpdir()), (e: unknown) => e instanceof DatasetFileError && e.diagnostic.code === 'file-unreadable');
});

test('json array: multi-line elements, element-level errors keep other elements, unclosed array', async () => {
  const file = tmpFile('d.json', '[\n  {"text": "a",\n   "x": [1, {"y": "]}"}]},\n  {"text": "b" "oops"},\n  {"text": "c"}\n]\n');
  const { records, problems } = await readAll(file);
  assert.deepEqual(records.map((r) => [(r.value as { text: string }).text, r.line, r.row]), [
    ['a', 2, 1],
    ['c', 5, 3],
  ]);
  assert.equal(problems.length, 1);
  assert.equal(problems[0].code, 'bad-json');
  assert.equal(problems[0].line, 4);
  assert.equal(problems[0].row, 2);

  const open = tmpFile('o.json', '[{"text": "a"}, {"text": "b"}');
  const o = await readAll(open);
  assert.equal(o.records.length, 2);
  assert.equal(o.problems[0].code, 'bad-json');
  assert.match(o.problems[0].message, /not closed/);

  const notArray = tmpFile('n.json', '"hello"');
  const n = await readAll(notArray);
  assert.equal(n.problems[0].code, 'not-an-array');
});

test('a .json file holding one object per line is read as JSON Lines', async () => {
  const file = tmpFile('d.json', '{"text": "a"}\n{"text": "b"}\n');
  assert.equal(await detectFileKind(file), 'jsonl');
  assert.equal((await readAll(file)).records.length, 2);
});

test('csv: quoted fields, doubled quotes, embedded newlines (also CRLF), header', async () => {
  const file = tmpFile('d.csv', 'prompt,completion\r\n"Say ""hi""","Hi,\r\nthere"\r\nplain,"multi\nline\nvalue"\r\n');
  const { records, problems } = await readAll(file);
  assert.equal(problems.length, 0);
  assert.deepEqual(records.map((r) => r.value), [
    { prompt: 'Say "hi"', completion: 'Hi,\nthere' },
    { prompt: 'plain', completion: 'multi\nline\nvalue' },
  ]);
  assert.deepEqual(records.map((r) => [r.row, r.line]), [
    [1, 2],
    [2, 4],
  ]);
});

test('csv: wrong field count, stray quote and an unclosed quote are diagnosed per row', async () => {
  const file = tmpFile('d.csv', 'prompt,completion\na,b,c\nx"y,z\ngood,row\n"never closed,q\n');
  const { records, problems } = await readAll(file);
  assert.deepEqual(records.map((r) => r.value), [{ prompt: 'good', completion: 'row' }]);
  assert.deepEqual(problems.map((p) => [p.code, p.line]), [
    ['csv-column-count', 2],
    ['csv-bad-quote', 3],
    ['csv-bad-quote', 5],
  ]);
});

test('csv with a missing column: one diagnostic on the header, rows counted as skipped', async () => {
  const file = tmpFile('d.csv', 'instruction,input\nq1,\nq2,x\n');
  const r = await examples(file);
  assert.equal(r.rows.length, 0);
  const d = r.diagnostics.filter((x) => x.code === 'csv-missing-column');
  assert.equal(d.length, 1);
  assert.equal(d[0].line, 1);
  assert.match(d[0].message, /"output"/);
  assert.equal(r.stats.skipped['csv-missing-column'], 2);
});

test('formats are detected from field names and converted', async () => {
  assert.equal(detectRowFormat({ messages: [] }), 'messages');
  assert.equal(detectRowFormat({ conversations: [] }), 'sharegpt');
  assert.equal(detectRowFormat({ instruction: 'a', output: 'b' }), 'alpaca');
  assert.equal(detectRowFormat({ prompt: 'a', completion: 'b' }), 'prompt_completion');
  assert.equal(detectRowFormat({ text: 'a' }), 'text');
  assert.equal(detectRowFormat({ foo: 1 }), null);

  const file = tmpFile(
    'mixed.jsonl',
    [
      { messages: [{ role: 'system', content: 'S' }, { role: 'user', content: 'Q' }, { role: 'assistant', content: 'A' }] },
      { conversations: [{ from: 'human', value: 'Q2' }, { from: 'gpt', value: 'A2' }] },
    ]
      .map((x) => JSON.stringify(x))
      .join('\n'),
  );
  const r = await examples(file);
  assert.equal(r.format, 'messages');
  assert.deepEqual(r.rows[1].example, { kind: 'chat', messages: [{ role: 'user', content: 'Q2' }, { role: 'assistant', content: 'A2' }] });

  const alpaca = tmpFile('a.jsonl', JSON.stringify({ instruction: 'Translate', input: 'hello', output: 'bonjour' }) + '\n' + JSON.stringify({ instruction: 'Say hi', input: '', output: 'hi' }));
  const a = await examples(alpaca);
  assert.equal(a.format, 'alpaca');
  assert.deepEqual(a.rows[0].example, { kind: 'chat', messages: [{ role: 'user', content: 'Translate\n\nhello' }, { role: 'assistant', content: 'bonjour' }] });
  assert.deepEqual(a.rows[1].example, { kind: 'chat', messages: [{ role: 'user', content: 'Say hi' }, { role: 'assistant', content: 'hi' }] });

  const pc = tmpFile('p.jsonl', JSON.stringify({ prompt: 'Q: 2+2\nA:', completion: ' 4' }));
  assert.deepEqual((await examples(pc)).rows[0].example, { kind: 'completion', prompt: 'Q: 2+2\nA:', completion: ' 4' });

  const text = tmpFile('t.jsonl', JSON.stringify({ text: 'just text' }));
  assert.deepEqual((await examples(text)).rows[0].example, { kind: 'text', text: 'just text' });
});

test('the format can be forced; rows that do not fit are reported with the missing field', async () => {
  const file = tmpFile('d.jsonl', [JSON.stringify({ prompt: 'p', completion: 'c', text: 't' }), JSON.stringify({ prompt: 'only' })].join('\n'));
  const forced = await examples(file, 'text');
  assert.equal(forced.rows.length, 1);
  assert.deepEqual(forced.rows[0].example, { kind: 'text', text: 't' });
  const missing = forced.diagnostics.find((d) => d.code === 'missing-field')!;
  assert.equal(missing.line, 2);
  assert.match(missing.message, /"text"/);

  const auto = await examples(file);
  const d = auto.diagnostics.find((x) => x.row === 2)!;
  assert.equal(d.code, 'missing-field');
  assert.match(d.message, /"completion"/);
});

test('row-level problems: unknown role, empty answer, no assistant, wrong type, not an object', async () => {
  const rows = [
    { messages: [{ role: 'user', content: 'q' }, { role: 'wizard', content: 'a' }] },
    { messages: [{ role: 'user', content: 'q' }, { role: 'assistant', content: '  ' }] },
    { messages: [{ role: 'user', content: 'q' }] },
    { messages: [{ role: 'user', content: 5 }, { role: 'assistant', content: 'a' }] },
    [1, 2],
    { messages: [{ role: 'user', content: 'fine' }, { role: 'assistant', content: 'yes' }] },
    { messages: [{ role: 'user', content: '' }, { role: 'assistant', content: 'ok' }] },
  ];
  const file = tmpFile('d.jsonl', rows.map((r) => JSON.stringify(r)).join('\n'));
  const r = await examples(file);
  assert.equal(r.rows.length, 2);
  const byLine = new Map(r.diagnostics.map((d) => [d.line, d]));
  assert.equal(byLine.get(1)!.code, 'unknown-role');
  assert.match(byLine.get(1)!.message, /wizard/);
  assert.equal(byLine.get(2)!.code, 'empty-answer');
  assert.equal(byLine.get(3)!.code, 'no-assistant-turn');
  assert.equal(byLine.get(4)!.code, 'wrong-type');
  assert.equal(byLine.get(5)!.code, 'not-an-object');
  assert.equal(byLine.get(7)!.code, 'empty-message');
  assert.equal(byLine.get(7)!.severity, 'warning');
  assert.equal(r.stats.read, 7);
  assert.equal(r.stats.usable, 2);
  assert.deepEqual(r.stats.skipped, { 'unknown-role': 1, 'empty-answer': 1, 'no-assistant-turn': 1, 'wrong-type': 1, 'not-an-object': 1 });
});

test('FormatResolver: the first fitting row decides; later rows of another format are reported', () => {
  const res = new FormatResolver('auto', 'f');
  assert.deepEqual(res.resolve({ row: 1, line: 1, value: { text: 'a' } }), { format: 'text' });
  assert.deepEqual(res.resolve({ row: 2, line: 2, value: { prompt: 'a', completion: 'b' } }), { format: 'text' });
  const c = convertRecord({ row: 2, line: 2, value: { prompt: 'a', completion: 'b' } }, 'text', { file: 'f' });
  assert.equal(c.ok, false);
});

test('foldSystemIntoUser merges the system prompt into the first user turn', () => {
  assert.deepEqual(
    foldSystemIntoUser([
      { role: 'system', content: 'Be brief.' },
      { role: 'user', content: 'Hi' },
      { role: 'assistant', content: 'Hello' },
      { role: 'user', content: 'Bye' },
    ]),
    [
      { role: 'user', content: 'Be brief.\n\nHi' },
      { role: 'assistant', content: 'Hello' },
      { role: 'user', content: 'Bye' },
    ],
  );
});

test('DiagnosticSink caps each code and reports the overflow once', () => {
  const sink = new DiagnosticSink(3);
  for (let i = 0; i < 10; i++) sink.emit('duplicate-row', { message: 'dup', file: 'f', line: i + 1 });
  sink.emit('bad-json', { message: 'x', file: 'f', line: 1 });
  const list = sink.list();
  assert.equal(list.filter((d) => d.code === 'duplicate-row').length, 3);
  const over = list.find((d) => d.code === 'too-many-diagnostics')!;
  assert.match(over.message, /7 more "duplicate-row" problems not listed \(10 in all\)/);
  assert.equal(sink.count('duplicate-row'), 10);
  assert.ok(sink.hasErrors());
});

test('lines: a 20 MB file streams in bounded memory', async () => {
  const line = JSON.stringify({ text: 'y'.repeat(1000) }) + '\n';
  const file = tmpFile('big.jsonl', line.repeat(20000));
  let lines = 0;
  let maxBatchChars = 0;
  for await (const b of readLineBatches(file, { chunkSize: 1 << 16 })) {
    lines += b.lines.length;
    maxBatchChars = Math.max(maxBatchChars, b.lines.reduce((n, l) => n + l.text.length, 0));
  }
  assert.equal(lines, 20000);
  assert.ok(maxBatchChars < 2 * (1 << 16), `one batch holds at most about one chunk (${maxBatchChars})`);
});

test('JSON Lines diagnostics point at the column of the offending key or value', async () => {
  const rows = [
    '{"messages": [{"role": "user", "content": "q"}, {"role": "wizard", "content": "a"}]}',
    '{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": ""}]}',
    '{"nothing": 1}',
  ];
  const file = tmpFile('d.jsonl', rows.join('\n'));
  const r = await examples(file);
  const col = (line: number) => r.diagnostics.find((d) => d.line === line)!.column;
  assert.equal(col(1), rows[0].indexOf('"role": "wizard"') + 1);
  assert.equal(col(2), rows[1].lastIndexOf('"content"') + 1);
  assert.equal(col(3), 1);
  const alpaca = '{"instruction": "x", "output": 5}';
  const a = await examples(tmpFile('a.jsonl', alpaca));
  assert.equal(a.diagnostics[0].code, 'wrong-type');
  assert.equal(a.diagnostics[0].column, alpaca.indexOf('"output"') + 1);
});

test('a JSON array on one long line is read element by element (fragments, multibyte characters cut anywhere)', async () => {
  const rows = Array.from({ length: 3000 }, (_, i) => ({ text: `ëlément ${i} 😀 ${'x'.repeat(i % 50)}`, n: i }));
  const file = tmpFile('one-line.json', JSON.stringify(rows));
  const records: SourceRecord[] = [];
  const problems: Diagnostic[] = [];
  for await (const b of readRecords(file, { chunkSize: 997, maxCarry: 100 })) {
    records.push(...b.records);
    problems.push(...b.problems);
  }
  assert.deepEqual(problems, []);
  assert.equal(records.length, 3000);
  assert.deepEqual(records[2999].value, rows[2999]);
  assert.deepEqual(records[1234].value, rows[1234]);
  assert.equal(records[1234].line, 1);
  const text = JSON.stringify(rows);
  const at = text.indexOf('"n":1000}');
  const broken = tmpFile('broken.json', text.slice(0, at) + '@' + text.slice(at));
  const r2 = await readAll(broken, 997);
  assert.equal(r2.records.length, 2999);
  const bad = r2.problems.find((p) => p.code === 'bad-json')!;
  assert.equal(bad.line, 1);
  assert.equal(bad.row, 1001);
  assert.equal(bad.column, at + 1, 'column (UTF-16) counts from the start of the line, not the fragment');
});

test('long JSON Lines rows are joined from fragments; a bad byte in a fragment has its column in the line', async () => {
  const long = JSON.stringify({ text: 'ü'.repeat(70000) + '😀' });
  const file = tmpFile('long.jsonl', [long, JSON.stringify({ text: 'short' }), long].join('\n'));
  const { records, problems } = await readAll(file, 4096);
  assert.equal(problems.length, 0);
  assert.equal(records.length, 3);
  assert.equal((records[2].value as { text: string }).text.length, 70002);
  assert.equal(records[2].line, 3);

  const prefix = '{"text": "' + 'a'.repeat(100000);
  const withBad = Buffer.concat([Buffer.from(prefix), Buffer.from([0xff]), Buffer.from('"}\n{"text": "ok"}\n')]);
  const f2 = tmpFile('bad.jsonl', withBad);
  const r = await readAll(f2, 4096);
  assert.deepEqual(r.records.map((x) => x.value), [{ text: 'ok' }]);
  assert.equal(r.problems.length, 1);
  assert.equal(r.problems[0].code, 'bad-encoding');
  assert.equal(r.problems[0].column, prefix.length + 1);
});
