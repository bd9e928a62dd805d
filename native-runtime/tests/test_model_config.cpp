#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include "common/errors.hpp"
#include "formats/model_config.hpp"
#include "temp_dir.hpp"
#include "test.hpp"

using namespace lora;

namespace {

// Writes config.json into `dir` and returns the folder.
const std::string& write_config(const lora_test::TempDir& dir, const std::string& json) {
  std::ofstream(dir / "config.json") << json;
  return dir.path();
}

ModelConfig load_json(const std::string& json) {
  lora_test::TempDir dir("cfg");
  return load_model_config(write_config(dir, json));
}

// The Llama 3.2 1B config as published (fields trimmed to those that matter).
const char* kLlama32 = R"({
  "architectures": ["LlamaForCausalLM"],
  "attention_bias": false,
  "bos_token_id": 128000,
  "eos_token_id": 128001,
  "head_dim": 64,
  "hidden_act": "silu",
  "hidden_size": 2048,
  "initializer_range": 0.02,
  "intermediate_size": 8192,
  "max_position_embeddings": 131072,
  "mlp_bias": false,
  "model_type": "llama",
  "num_attention_heads": 32,
  "num_hidden_layers": 16,
  "num_key_value_heads": 8,
  "pretraining_tp": 1,
  "rms_norm_eps": 1e-05,
  "rope_scaling": {
    "factor": 32.0,
    "high_freq_factor": 4.0,
    "low_freq_factor": 1.0,
    "original_max_position_embeddings": 8192,
    "rope_type": "llama3"
  },
  "rope_theta": 500000.0,
  "tie_word_embeddings": true,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.45.0.dev0",
  "use_cache": true,
  "vocab_size": 128256
})";

std::string replace(std::string s, const std::string& from, const std::string& to) {
  size_t pos = s.find(from);
  if (pos == std::string::npos) {
    ::lora_test::record_failure(__FILE__, __LINE__, "fixture edit not found: " + from);
    return s;
  }
  return s.replace(pos, from.size(), to);
}

struct Err {
  std::string code, field, file, hint, message;
  int64_t line = 0;
};

Err load_error(const std::string& json) {
  lora_test::TempDir dir("cfg");
  try {
    load_model_config(write_config(dir, json));
  } catch (const InputError& e) {
    return {e.code, e.field, e.file, e.hint, e.what(), e.line};
  }
  return {"<none>", "", "", "", "", 0};
}

}  // namespace

TEST(model_config_llama32) {
  lora_test::TempDir tmp("cfg");
  const std::string dir = write_config(tmp, kLlama32);
  ModelConfig c = load_model_config(dir);
  CHECK(c.arch == Arch::Llama);
  CHECK_EQ(std::string(arch_name(c.arch)), std::string("llama"));
  CHECK_EQ(c.hf_architecture, std::string("LlamaForCausalLM"));
  CHECK_EQ(c.dir, dir);
  CHECK_EQ(c.hidden_size, int64_t(2048));
  CHECK_EQ(c.intermediate_size, int64_t(8192));
  CHECK_EQ(c.num_layers, int64_t(16));
  CHECK_EQ(c.num_heads, int64_t(32));
  CHECK_EQ(c.num_kv_heads, int64_t(8));
  CHECK_EQ(c.head_dim, int64_t(64));
  CHECK_EQ(c.vocab_size, int64_t(128256));
  CHECK_EQ(c.max_position_embeddings, int64_t(131072));
  CHECK_EQ(c.rms_norm_eps, 1e-5);
  CHECK_EQ(c.rope_theta, 500000.0);
  CHECK_EQ(c.rope_scaling.type, std::string("llama3"));
  CHECK_EQ(c.rope_scaling.factor, 32.0);
  CHECK_EQ(c.rope_scaling.low_freq_factor, 1.0);
  CHECK_EQ(c.rope_scaling.high_freq_factor, 4.0);
  CHECK_EQ(c.rope_scaling.original_max_position_embeddings, int64_t(8192));
  CHECK(c.tie_word_embeddings);
  CHECK(!c.attention_bias);
  CHECK(!c.mlp_bias);
  CHECK_EQ(c.sliding_window, int64_t(0));
  CHECK_EQ(c.torch_dtype, std::string("bfloat16"));
}

TEST(model_config_defaults_tinyllama_style) {
  // No num_key_value_heads, head_dim, rope_scaling or tie_word_embeddings: HF defaults apply.
  ModelConfig c = load_json(R"({
    "architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 172,
    "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 256,
    "rope_scaling": null})");
  CHECK_EQ(c.num_kv_heads, int64_t(4));
  CHECK_EQ(c.head_dim, int64_t(16));
  CHECK_EQ(c.rope_scaling.type, std::string(""));
  CHECK_EQ(c.rope_scaling.factor, 1.0);
  CHECK(!c.tie_word_embeddings);
  CHECK_EQ(c.rms_norm_eps, 1e-6);
  CHECK_EQ(c.rope_theta, 10000.0);
  CHECK_EQ(c.max_position_embeddings, int64_t(2048));
  // rope_scaling "default" means none; the older "type" key and "linear" are read too.
  ModelConfig d = load_json(replace(kLlama32, "\"rope_type\": \"llama3\"", "\"rope_type\": \"default\""));
  CHECK_EQ(d.rope_scaling.type, std::string(""));
  ModelConfig l = load_json(R"({"architectures": ["LlamaForCausalLM"], "hidden_size": 64,
    "intermediate_size": 128, "num_hidden_layers": 1, "num_attention_heads": 4, "vocab_size": 10,
    "rope_scaling": {"type": "linear", "factor": 2.0}, "attention_bias": true, "mlp_bias": true})");
  CHECK_EQ(l.rope_scaling.type, std::string("linear"));
  CHECK_EQ(l.rope_scaling.factor, 2.0);
  CHECK(l.attention_bias);
  CHECK(l.mlp_bias);
  // model_type alone identifies the architecture when "architectures" is absent.
  ModelConfig m = load_json(R"({"model_type": "qwen2", "hidden_size": 64,
    "intermediate_size": 128, "num_hidden_layers": 1, "num_attention_heads": 4, "vocab_size": 10})");
  CHECK(m.arch == Arch::Qwen2);
}

TEST(model_config_mistral_and_qwen2) {
  const char* mistral = R"({
    "architectures": ["MistralForCausalLM"], "hidden_size": 4096, "intermediate_size": 14336,
    "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 32000,
    "max_position_embeddings": 32768, "rms_norm_eps": 1e-05, "rope_theta": 10000.0,
    "sliding_window": 4096, "tie_word_embeddings": false, "hidden_act": "silu", "torch_dtype": "bfloat16"})";
  ModelConfig m = load_json(mistral);
  CHECK(m.arch == Arch::Mistral);
  CHECK_EQ(m.sliding_window, int64_t(4096));
  CHECK_EQ(m.head_dim, int64_t(128));
  CHECK(!m.attention_bias);
  ModelConfig m2 = load_json(replace(mistral, "\"sliding_window\": 4096", "\"sliding_window\": null"));
  CHECK_EQ(m2.sliding_window, int64_t(0));
  // Mistral NeMo: explicit head_dim that is not hidden_size / heads.
  ModelConfig nemo = load_json(replace(
      replace(mistral, "\"hidden_size\": 4096", "\"hidden_size\": 5120, \"head_dim\": 128"),
      "\"num_hidden_layers\": 32", "\"num_hidden_layers\": 40"));
  CHECK_EQ(nemo.head_dim, int64_t(128));
  CHECK_EQ(nemo.hidden_size, int64_t(5120));

  const char* qwen = R"({
    "architectures": ["Qwen2ForCausalLM"], "hidden_size": 896, "intermediate_size": 4864,
    "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936,
    "max_position_embeddings": 32768, "max_window_layers": 21, "rms_norm_eps": 1e-06,
    "rope_theta": 1000000.0, "sliding_window": 32768, "use_sliding_window": false,
    "tie_word_embeddings": true, "torch_dtype": "bfloat16", "hidden_act": "silu"})";
  ModelConfig q = load_json(qwen);
  CHECK(q.arch == Arch::Qwen2);
  CHECK_EQ(std::string(arch_name(q.arch)), std::string("qwen2"));
  CHECK(q.attention_bias);  // Qwen2 always has q/k/v biases
  CHECK_EQ(q.head_dim, int64_t(64));
  CHECK_EQ(q.num_kv_heads, int64_t(2));
  CHECK_EQ(q.sliding_window, int64_t(0));  // use_sliding_window false
  CHECK(q.tie_word_embeddings);
  CHECK_EQ(q.rope_theta, 1000000.0);
  ModelConfig q2 = load_json(replace(qwen, "\"use_sliding_window\": false", "\"use_sliding_window\": true"));
  CHECK_EQ(q2.sliding_window, int64_t(32768));
}

TEST(model_config_unsupported_architecture) {
  Err e = load_error(R"({"architectures": ["GPTNeoXForCausalLM"], "hidden_size": 768, "num_hidden_layers": 12})");
  CHECK_EQ(e.code, std::string("unsupported_architecture"));
  CHECK_EQ(e.field, std::string("architectures"));
  CHECK(e.message.find("GPTNeoXForCausalLM") != std::string::npos);
  CHECK(e.hint.find("LlamaForCausalLM") != std::string::npos);
  CHECK(e.hint.find("Qwen2ForCausalLM") != std::string::npos);
  CHECK(e.hint.find("GPT2LMHeadModel") != std::string::npos);
  CHECK_EQ(e.line, int64_t(1));
  CHECK_EQ(load_error(R"({"model_type": "phi3", "hidden_size": 64})").code, std::string("unsupported_architecture"));
  CHECK_EQ(load_error(R"({"hidden_size": 64})").code, std::string("unsupported_architecture"));
  CHECK_EQ(load_error(R"({"architectures": []})").code, std::string("config_field"));
}

TEST(model_config_rejects_bad_fields) {
  struct Case {
    std::string from, to, field;
  };
  const std::vector<Case> cases = {
      {"\"hidden_size\": 2048,", "", "hidden_size"},
      {"\"hidden_size\": 2048", "\"hidden_size\": 0", "hidden_size"},
      {"\"hidden_size\": 2048", "\"hidden_size\": -5", "hidden_size"},
      {"\"hidden_size\": 2048", "\"hidden_size\": 2048.5", "hidden_size"},
      {"\"hidden_size\": 2048", "\"hidden_size\": \"2048\"", "hidden_size"},
      {"\"intermediate_size\": 8192,", "", "intermediate_size"},
      {"\"num_hidden_layers\": 16", "\"num_hidden_layers\": 0", "num_hidden_layers"},
      {"\"num_attention_heads\": 32", "\"num_attention_heads\": 0", "num_attention_heads"},
      {"\"vocab_size\": 128256", "\"vocab_size\": null", "vocab_size"},
      {"\"num_key_value_heads\": 8", "\"num_key_value_heads\": 5", "num_key_value_heads"},
      {"\"num_key_value_heads\": 8", "\"num_key_value_heads\": 0", "num_key_value_heads"},
      {"\"head_dim\": 64,", "\"head_dim\": 0,", "head_dim"},
      {"\"head_dim\": 64,", "\"head_dim\": 63,", "head_dim"},
      {"\"rms_norm_eps\": 1e-05", "\"rms_norm_eps\": 0", "rms_norm_eps"},
      {"\"rope_theta\": 500000.0", "\"rope_theta\": \"big\"", "rope_theta"},
      {"\"tie_word_embeddings\": true", "\"tie_word_embeddings\": 1", "tie_word_embeddings"},
      {"\"attention_bias\": false", "\"attention_bias\": \"no\"", "attention_bias"},
      {"\"hidden_act\": \"silu\"", "\"hidden_act\": \"gelu\"", "hidden_act"},
      {"\"rope_type\": \"llama3\"", "\"rope_type\": \"yarn\"", "rope_scaling.rope_type"},
      {"\"rope_type\": \"llama3\"", "\"rope_type\": \"dynamic\"", "rope_scaling.rope_type"},
      {"\"rope_type\": \"llama3\"", "\"type\": \"longrope\"", "rope_scaling.type"},
      {"\"rope_type\": \"llama3\"", "\"unrelated\": 1", "rope_scaling.rope_type"},
      {"\"factor\": 32.0,", "", "rope_scaling.factor"},
      {"\"factor\": 32.0", "\"factor\": -1", "rope_scaling.factor"},
      {"\"high_freq_factor\": 4.0", "\"high_freq_factor\": 0.5", "rope_scaling.high_freq_factor"},
      {"\"original_max_position_embeddings\": 8192,", "", "rope_scaling.original_max_position_embeddings"},
      {"\"rope_scaling\": {", "\"rope_scaling\": 3, \"x\": {", "rope_scaling"},
      {"\"max_position_embeddings\": 131072", "\"max_position_embeddings\": -1", "max_position_embeddings"},
  };
  for (const auto& c : cases) {
    Err e = load_error(replace(kLlama32, c.from, c.to));
    if (e.code != "config_field" || e.field != c.field) {
      ::lora_test::record_failure(__FILE__, __LINE__,
                                  "edit '" + c.from + "' -> '" + c.to + "': expected config_field/" + c.field +
                                      ", got " + e.code + "/" + e.field + " (" + e.message + ")");
      continue;
    }
    CHECK(e.file.find("config.json") != std::string::npos);
    CHECK(!e.hint.empty());
    CHECK(e.message.find(c.field) != std::string::npos);
  }
  // Without head_dim the heads must divide hidden_size.
  Err e = load_error(replace(replace(kLlama32, "\"head_dim\": 64,", ""), "\"hidden_size\": 2048", "\"hidden_size\": 2050"));
  CHECK_EQ(e.code, std::string("config_field"));
  CHECK_EQ(e.field, std::string("num_attention_heads"));
  CHECK(e.message.find("2050") != std::string::npos);
  CHECK(e.line > 1);  // points at the offending line
}

TEST(model_config_missing_or_malformed_file) {
  const char* base = std::getenv("TMPDIR");
  Err e;
  try {
    load_model_config(std::string(base ? base : "/tmp") + "/lora_no_such_model_dir");
  } catch (const InputError& x) {
    e = {x.code, x.field, x.file, x.hint, x.what(), x.line};
  }
  CHECK_EQ(e.code, std::string("file_read"));
  CHECK(e.file.find("config.json") != std::string::npos);
  CHECK(e.hint.find("model folder") != std::string::npos);
  Err p = load_error("{\n  \"architectures\": [\"LlamaForCausalLM\"],\n  \"hidden_size\": 64,,\n}");
  CHECK_EQ(p.code, std::string("json_parse"));
  CHECK_EQ(p.line, int64_t(3));
  CHECK_EQ(load_error("[1, 2]").code, std::string("config_field"));
}

TEST(model_config_target_modules) {
  const auto& m = llama_target_modules();
  CHECK_EQ(m.size(), size_t(7));
  CHECK_EQ(m[0], std::string("q_proj"));
  CHECK_EQ(m[3], std::string("o_proj"));
  CHECK_EQ(m[6], std::string("down_proj"));
}
