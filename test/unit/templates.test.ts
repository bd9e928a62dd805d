import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ChatTemplate, pickModelTemplate, TemplateRenderError, builtinTemplateSource, BUILTIN_TEMPLATE_NAMES } from '../../src/core/tokenize/templates';
import { ExampleRenderer, RenderOptions } from '../../src/core/tokenize/render';
import { ChatMessage } from '../../src/core/dataset/formats';
import { CONVERSATION, realTemplate } from './datasetHelpers';

const conv = (specials: string[], eos: string, bos: string | null = null) => ({
  bosToken: bos,
  eosToken: eos,
  eosId: 2,
  hasDefaultPrefix: bos !== null,
  specialTokens: new Set(specials),
});

function renderer(source: string, bos: string, eos: string, specials: string[], opts: Partial<RenderOptions> = {}) {
  const t = new ChatTemplate(source, { source: 'model' }, bos, eos);
  return new ExampleRenderer(t, conv(specials, eos, bos || null), { trainOn: 'completion', assistantTurns: 'all', foldSystemIntoUser: false, ...opts });
}

function trainedTexts(r: ExampleRenderer, messages: ChatMessage[]): string[] {
  const res = r.render({ kind: 'chat', messages });
  assert.ok(res.ok, res.ok ? '' : res.message);
  return res.rendered.spans.map(([a, b]) => res.rendered.text.slice(a, b));
}

test('real templates render as transformers does (Llama 3, Qwen2.5, Mistral v0.3, Gemma 2)', () => {
  const msgs = CONVERSATION.slice(0, 2);
  assert.equal(
    new ChatTemplate(realTemplate('llama3'), { source: 'model' }, '<|begin_of_text|>', '<|eot_id|>').render(msgs, false),
    '<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nWhat is the capital of France?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nParis is the capital.<|eot_id|>',
  );
  assert.equal(
    new ChatTemplate(realTemplate('chatml'), { source: 'model' }, '', '<|im_end|>').render(msgs, true),
    '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\nParis is the capital.<|im_end|>\n<|im_start|>assistant\n',
  );
  assert.equal(
    new ChatTemplate(realTemplate('mistral'), { source: 'model' }, '<s>', '</s>').render(msgs, false),
    '<s>[INST] What is the capital of France?[/INST] Paris is the capital.</s>',
  );
  assert.equal(
    new ChatTemplate(realTemplate('gemma'), { source: 'model' }, '<bos>', '<eos>').render(msgs, true),
    '<bos><start_of_turn>user\nWhat is the capital of France?<end_of_turn>\n<start_of_turn>model\nParis is the capital.<end_of_turn>\n<start_of_turn>model\n',
  );
});

test('answer spans come from rendering: each assistant turn plus its end-of-turn token, nothing else', () => {
  const cases: Array<[string, string, string, string[], string[]]> = [
    ['llama3', '<|begin_of_text|>', '<|eot_id|>', ['<|begin_of_text|>', '<|start_header_id|>', '<|end_header_id|>', '<|eot_id|>'], ['Paris is the capital.<|eot_id|>', 'About 2.1 million.<|eot_id|>']],
    ['chatml', '', '<|im_end|>', ['<|im_start|>', '<|im_end|>'], ['Paris is the capital.<|im_end|>', 'About 2.1 million.<|im_end|>']],
    ['mistral', '<s>', '</s>', ['<s>', '</s>', '[INST]', '[/INST]'], [' Paris is the capital.</s>', ' About 2.1 million.</s>']],
    ['gemma', '<bos>', '<eos>', ['<bos>', '<eos>', '<start_of_turn>', '<end_of_turn>'], ['Paris is the capital.<end_of_turn>', 'About 2.1 million.<end_of_turn>']],
  ];
  for (const [style, bos, eos, specials, expected] of cases) {
    const r = renderer(realTemplate(style as 'llama3'), bos, eos, specials);
    assert.deepEqual(trainedTexts(r, CONVERSATION), expected, style);
    const last = renderer(realTemplate(style as 'llama3'), bos, eos, specials, { assistantTurns: 'last' });
    assert.deepEqual(trainedTexts(last, CONVERSATION), expected.slice(1), `${style}, last turn only`);
  }
});

test('Mistral v0.3 drops the system prompt of a finished conversation: caught, fixed by folding', () => {
  const msgs: ChatMessage[] = [{ role: 'system', content: 'You are a geography tutor.' }, ...CONVERSATION];
  const r = renderer(realTemplate('mistral'), '<s>', '</s>', ['<s>', '</s>']);
  const res = r.render({ kind: 'chat', messages: msgs });
  assert.equal(res.ok, false);
  if (!res.ok) {
    assert.equal(res.code, 'template-lost-content');
    assert.match(res.message, /message 0 \(system\)/);
    assert.match(res.hint!, /foldSystemIntoUser/);
  }
  const folded = renderer(realTemplate('mistral'), '<s>', '</s>', ['<s>', '</s>'], { foldSystemIntoUser: true });
  const ok = folded.render({ kind: 'chat', messages: msgs });
  assert.ok(ok.ok);
  if (ok.ok) {
    assert.ok(ok.rendered.text.startsWith('<s>[INST] You are a geography tutor.\n\nWhat is the capital of France?[/INST]'));
    assert.deepEqual(ok.rendered.spans.map(([a, b]) => ok.rendered.text.slice(a, b)), [' Paris is the capital.</s>', ' About 2.1 million.</s>']);
  }
});

test('Gemma 2 raises on a system role: a template-error with the folding hint; folding works', () => {
  const msgs: ChatMessage[] = [{ role: 'system', content: 'Answer briefly.' }, ...CONVERSATION.slice(0, 2)];
  const r = renderer(realTemplate('gemma'), '<bos>', '<eos>', ['<end_of_turn>']);
  const res = r.render({ kind: 'chat', messages: msgs });
  assert.equal(res.ok, false);
  if (!res.ok) {
    assert.equal(res.code, 'template-error');
    assert.match(res.message, /System role not supported/);
    assert.match(res.hint!, /foldSystemIntoUser/);
  }
  const folded = renderer(realTemplate('gemma'), '<bos>', '<eos>', ['<end_of_turn>'], { foldSystemIntoUser: true });
  assert.deepEqual(trainedTexts(folded, msgs), ['Paris is the capital.<end_of_turn>']);
});

test('roles that do not alternate make Gemma raise: a row-level error, not an exception', () => {
  const r = renderer(realTemplate('gemma'), '<bos>', '<eos>', ['<end_of_turn>']);
  const res = r.render({ kind: 'chat', messages: [{ role: 'user', content: 'a' }, { role: 'user', content: 'b' }, { role: 'assistant', content: 'c' }] });
  assert.equal(res.ok, false);
  if (!res.ok) assert.match(res.message, /alternate/);
});

test('a template that never closes answers gets EOS inserted after each one', () => {
  const src = "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}";
  const r = renderer(src, '', '</s>', ['</s>']);
  const res = r.render({ kind: 'chat', messages: CONVERSATION });
  assert.ok(res.ok);
  if (res.ok) {
    assert.deepEqual(res.rendered.eosAfter, [true, true]);
    assert.deepEqual(res.rendered.spans.map(([a, b]) => res.rendered.text.slice(a, b)), ['Paris is the capital.\n', 'About 2.1 million.\n']);
  }
});

test('train on everything: one span over the whole rendering', () => {
  const r = renderer(realTemplate('llama3'), '<|begin_of_text|>', '<|eot_id|>', ['<|eot_id|>'], { trainOn: 'all' });
  const res = r.render({ kind: 'chat', messages: CONVERSATION });
  assert.ok(res.ok);
  if (res.ok) assert.deepEqual(res.rendered.spans, [[0, res.rendered.text.length]]);
});

test('completion and text examples: prompt masked, completion trained, EOS after it', () => {
  const r = renderer(realTemplate('llama3'), '<|begin_of_text|>', '<|eot_id|>', ['<|eot_id|>']);
  const c = r.render({ kind: 'completion', prompt: 'Q: 2+2\nA:', completion: ' 4' });
  assert.ok(c.ok);
  if (c.ok) {
    assert.deepEqual(c.rendered.spans, [[9, 11]]);
    assert.deepEqual(c.rendered.eosAfter, [true]);
    assert.equal(c.rendered.addPrefix, true);
  }
  const t = r.render({ kind: 'text', text: 'plain' });
  assert.ok(t.ok);
  if (t.ok) assert.deepEqual(t.rendered.spans, [[0, 5]]);
});

test('templates whose earlier turns render differently are located by content', () => {
  // Like reasoning models: an answer's <think> part is shown only for the final turn.
  const src =
    "{% for m in messages %}{% if m['role'] == 'assistant' %}{{ '<a>' }}{% if loop.last %}{{ '<think>hmm</think>' }}{% endif %}{{ m['content'] + '</a>' }}{% else %}{{ '<u>' + m['content'] + '</u>' }}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<a>' }}{% endif %}";
  const r = renderer(src, '', '</a>', ['</a>']);
  assert.deepEqual(trainedTexts(r, CONVERSATION), ['Paris is the capital.</a>', '<think>hmm</think>About 2.1 million.</a>']);
});

test('built-in templates parse and keep every message', () => {
  for (const name of BUILTIN_TEMPLATE_NAMES) {
    const t = new ChatTemplate(builtinTemplateSource(name), { source: name }, '<s>', '</s>');
    const msgs = name === 'gemma' ? CONVERSATION : [{ role: 'system' as const, content: 'SYS PROMPT' }, ...CONVERSATION];
    const text = t.render(msgs, false);
    for (const m of msgs) assert.ok(text.includes(m.content), `${name} keeps "${m.content}"`);
  }
});

test('a template that does not parse is a TemplateRenderError', () => {
  assert.throws(() => new ChatTemplate('{% for m in messages %}', { source: 'model' }, '', ''), TemplateRenderError);
});

test('pickModelTemplate: string, named list, nothing', () => {
  assert.deepEqual(pickModelTemplate('abc'), { source: 'abc' });
  assert.deepEqual(pickModelTemplate([{ name: 'tool_use', template: 'T' }, { name: 'default', template: 'D' }]), { source: 'D', name: 'default' });
  assert.equal(pickModelTemplate(undefined), null);
  assert.equal(pickModelTemplate('  '), null);
});

test('the per-role-sequence shortcut gives exactly what rendering every prefix gives', () => {
  let seed = 12345;
  const rand = () => ((seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648);
  const words = ['Paris', 'capital', ' spaced ', 'ünïcode', '😀', 'line\nbreak', '<tag>', '{{ x }}', 'ok.'];
  const text = () => Array.from({ length: 1 + Math.floor(rand() * 5) }, () => words[Math.floor(rand() * words.length)]).join(' ');
  const setups: Array<[string, string, string, string[], boolean]> = [
    [realTemplate('llama3'), '<|begin_of_text|>', '<|eot_id|>', ['<|eot_id|>'], false],
    [realTemplate('chatml'), '', '<|im_end|>', ['<|im_end|>'], false],
    [realTemplate('mistral'), '<s>', '</s>', ['</s>'], true],
    [realTemplate('gemma'), '<bos>', '<eos>', ['<end_of_turn>'], true],
    [builtinTemplateSource('alpaca'), '', '</s>', ['</s>'], false],
  ];
  let compared = 0;
  for (const [src, bos, eos, specials, fold] of setups) {
    for (const turns of ['all', 'last'] as const) {
      const fast = renderer(src, bos, eos, specials, { assistantTurns: turns, foldSystemIntoUser: fold });
      const t = new ChatTemplate(src, { source: 'model' }, bos, eos);
      const slow = new ExampleRenderer(t, conv(specials, eos, bos || null), { trainOn: 'completion', assistantTurns: turns, foldSystemIntoUser: fold }, false);
      for (let i = 0; i < 60; i++) {
        const msgs: ChatMessage[] = [];
        if (rand() < 0.4) msgs.push({ role: 'system', content: text() });
        const n = 1 + Math.floor(rand() * 3);
        for (let k = 0; k < n; k++) msgs.push({ role: 'user', content: text() }, { role: 'assistant', content: text() });
        const a = fast.render({ kind: 'chat', messages: msgs });
        const b = slow.render({ kind: 'chat', messages: msgs });
        assert.deepEqual(a, b);
        compared++;
      }
      assert.ok(fast.stats.shortcut > 10, `the shortcut is taken (${fast.stats.shortcut} of 60)`);
      assert.equal(slow.stats.shortcut, 0);
    }
  }
  assert.equal(compared, 600);
});
