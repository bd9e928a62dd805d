// Chat templates: the model's own (tokenizer_config.json `chat_template`, rendered with
// @huggingface/jinja exactly as transformers' apply_chat_template renders it) or a built-in
// fallback for models that ship none. Rendering errors are values, so one bad row never
// stops a dataset.
import { Template } from '@huggingface/jinja';
import type { ChatMessage } from '../dataset/formats';

export type BuiltinTemplateName = 'llama3' | 'chatml' | 'mistral' | 'gemma' | 'alpaca';
export type TemplateChoice = 'model' | BuiltinTemplateName;
export const BUILTIN_TEMPLATE_NAMES: readonly BuiltinTemplateName[] = ['llama3', 'chatml', 'mistral', 'gemma', 'alpaca'];

// The fallbacks are the templates the model families ship, minus their tool-calling
// branches (datasets here carry no tools) and minus Qwen's default system prompt (which
// would inject another model's identity into a fine-tune of an unrelated base model).
// The Mistral fallback puts the system message before the FIRST user turn: v0.3's own
// template puts it before the last one, which drops it from every training conversation
// that ends with the assistant's answer.
const BUILTIN_TEMPLATES: Record<BuiltinTemplateName, string> = {
  llama3:
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}",
  chatml:
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}",
  mistral:
    "{%- if messages[0]['role'] == 'system' %}{%- set system_message = messages[0]['content'] %}{%- set loop_messages = messages[1:] %}{%- else %}{%- set loop_messages = messages %}{%- endif %}" +
    "{{- bos_token }}{%- for message in loop_messages %}{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{- raise_exception('After the optional system message, conversation roles must alternate user/assistant/user/assistant/...') }}{%- endif %}" +
    "{%- if message['role'] == 'user' %}{%- if loop.first and system_message is defined %}{{- '[INST] ' + system_message + '\n\n' + message['content'] + '[/INST]' }}{%- else %}{{- '[INST] ' + message['content'] + '[/INST]' }}{%- endif %}" +
    "{%- elif message['role'] == 'assistant' %}{{- ' ' + message['content']|trim + eos_token }}{%- endif %}{%- endfor %}",
  gemma:
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}",
  // Plain text markers for base models without chat tokens; eos_token closes each answer so
  // the fine-tuned model learns to stop. BOS is left to the tokenizer's own convention.
  alpaca:
    "{% for message in messages %}{% if not loop.first and messages[loop.index0 - 1]['role'] == 'assistant' %}{{ '\n\n' }}{% endif %}{% if message['role'] == 'system' %}{{ message['content'] + '\n\n' }}{% elif message['role'] == 'user' %}{{ '### Instruction:\n' + message['content'] + '\n\n' }}{% elif message['role'] == 'assistant' %}{{ '### Response:\n' + message['content'] + eos_token }}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '### Response:\n' }}{% endif %}",
};

export function builtinTemplateSource(name: BuiltinTemplateName): string {
  return BUILTIN_TEMPLATES[name];
}

export class TemplateRenderError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'TemplateRenderError';
  }
}

export interface ChatTemplateInfo {
  /** 'model' when it came from tokenizer_config.json, else the built-in name. */
  source: 'model' | BuiltinTemplateName;
  /** For the model's templates: which named template was used when it ships several. */
  name?: string;
}

/**
 * A compiled chat template. `render` is what transformers' apply_chat_template(tokenize=False)
 * produces for the same messages, bos/eos strings and add_generation_prompt flag.
 */
export class ChatTemplate {
  private readonly template: Template;

  constructor(
    readonly source: string,
    readonly info: ChatTemplateInfo,
    private readonly bosToken: string,
    private readonly eosToken: string,
  ) {
    try {
      this.template = new Template(source);
    } catch (err) {
      throw new TemplateRenderError(`the chat template does not parse: ${errorText(err)}`);
    }
  }

  render(messages: readonly ChatMessage[], addGenerationPrompt: boolean): string {
    try {
      return this.template.render({
        messages: messages.map((m) => ({ role: m.role, content: m.content })),
        bos_token: this.bosToken,
        eos_token: this.eosToken,
        add_generation_prompt: addGenerationPrompt,
      });
    } catch (err) {
      throw new TemplateRenderError(errorText(err));
    }
  }
}

function errorText(err: unknown): string {
  const s = err instanceof Error ? err.message : String(err);
  return s.length > 300 ? s.slice(0, 297) + '...' : s;
}

/**
 * The template text from a tokenizer_config.json value: a string, or (newer transformers)
 * a list of {name, template} where "default" is the chat template.
 */
export function pickModelTemplate(value: unknown): { source: string; name?: string } | null {
  if (typeof value === 'string') return value.trim() ? { source: value } : null;
  if (Array.isArray(value)) {
    const named = value.filter(
      (v): v is { name: string; template: string } =>
        typeof v === 'object' && v !== null && typeof (v as { name?: unknown }).name === 'string' && typeof (v as { template?: unknown }).template === 'string',
    );
    const pick = named.find((v) => v.name === 'default') ?? named[0];
    return pick ? { source: pick.template, name: pick.name } : null;
  }
  return null;
}
