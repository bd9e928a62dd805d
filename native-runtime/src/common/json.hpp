#pragma once
// A small JSON value, parser and writer: enough for config.json, run.json, safetensors
// headers, adapter_config.json and events. Parse errors carry the 1-based line and column.
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace lora {

class Json {
 public:
  enum class Type { Null, Bool, Number, String, Array, Object };

  Json() = default;                       // null
  Json(std::nullptr_t) {}
  Json(bool b);
  Json(double d);
  Json(int v);
  Json(unsigned v);  // uint32_t (token ids, vocab sizes) would otherwise be ambiguous
  Json(int64_t v);
  Json(uint64_t v);
  Json(const char* s);
  Json(std::string s);
  static Json array();
  static Json object();

  Type type() const { return type_; }
  bool is_null() const { return type_ == Type::Null; }
  bool is_bool() const { return type_ == Type::Bool; }
  bool is_number() const { return type_ == Type::Number; }
  bool is_string() const { return type_ == Type::String; }
  bool is_array() const { return type_ == Type::Array; }
  bool is_object() const { return type_ == Type::Object; }
  // True when the number was written without fraction/exponent and fits in int64.
  bool is_integer() const;

  // Accessors assert on the wrong type (programmer error): validate with is_*() first.
  bool as_bool() const;
  double as_number() const;
  int64_t as_int() const;
  const std::string& as_string() const;
  const std::vector<Json>& items() const;                 // array
  const std::vector<std::pair<std::string, Json>>& members() const;  // object, insertion order

  // Object access. find() returns nullptr when absent.
  const Json* find(const std::string& key) const;
  bool has(const std::string& key) const { return find(key) != nullptr; }
  Json& set(const std::string& key, Json value);  // replaces or appends, keeps order
  // Array append.
  Json& push(Json value);
  size_t size() const;  // array or object element count

  // Line (1-based) where this value started in the parsed text, 0 if built in code.
  int line() const { return line_; }

  // Compact single-line serialisation (events, run.json are written with it; pretty=true
  // indents with two spaces). Numbers that are integers print without a fraction; doubles
  // print with enough digits to round-trip.
  std::string dump(bool pretty = false) const;

 private:
  friend class JsonParser;
  Type type_ = Type::Null;
  bool bool_ = false;
  double num_ = 0;
  bool integer_ = false;
  int64_t int_ = 0;
  std::string str_;
  std::vector<Json> arr_;
  std::vector<std::pair<std::string, Json>> obj_;
  int line_ = 0;
};

struct JsonParseError {
  std::string message;
  int line = 0;
  int column = 0;
};

// Parses `text`. On failure returns false and fills `err` (never throws on bad input).
// Rejects trailing garbage, nesting deeper than 256, and invalid UTF-8 escapes.
bool json_parse(const std::string& text, Json& out, JsonParseError& err);

// Reads and parses a file; throws InputError (code "json_parse" or "file_read") naming
// the file, line and column on failure.
Json json_parse_file(const std::string& path);

// Escapes a string for JSON output (adds the quotes).
std::string json_quote(const std::string& s);

}  // namespace lora
