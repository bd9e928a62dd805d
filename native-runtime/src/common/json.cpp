#include "common/json.hpp"

#include <algorithm>
#include <cassert>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string_view>
#include <unordered_set>

#include "common/errors.hpp"

namespace lora {

// ---------------------------------------------------------------------------------------
// Value

Json::Json(bool b) : type_(Type::Bool), bool_(b) {}
Json::Json(double d) : type_(Type::Number), num_(d) {}
Json::Json(int v) : type_(Type::Number), num_(v), integer_(true), int_(v) {}
Json::Json(unsigned v) : type_(Type::Number), num_(v), integer_(true), int_(v) {}
Json::Json(int64_t v) : type_(Type::Number), num_(static_cast<double>(v)), integer_(true), int_(v) {}
Json::Json(uint64_t v) : type_(Type::Number), num_(static_cast<double>(v)) {
  // Values above INT64_MAX cannot be kept exact in int_; they become plain doubles.
  if (v <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
    integer_ = true;
    int_ = static_cast<int64_t>(v);
  }
}
Json::Json(const char* s) : type_(Type::String), str_(s ? s : "") {}
Json::Json(std::string s) : type_(Type::String), str_(std::move(s)) {}

Json Json::array() {
  Json j;
  j.type_ = Type::Array;
  return j;
}

Json Json::object() {
  Json j;
  j.type_ = Type::Object;
  return j;
}

bool Json::is_integer() const { return type_ == Type::Number && integer_; }

bool Json::as_bool() const {
  assert(type_ == Type::Bool);
  return bool_;
}

double Json::as_number() const {
  assert(type_ == Type::Number);
  return num_;
}

int64_t Json::as_int() const {
  assert(type_ == Type::Number);
  if (integer_) return int_;
  // Saturate instead of the undefined behaviour of an out-of-range float->int cast.
  if (std::isnan(num_)) return 0;
  if (num_ >= 9223372036854775807.0) return std::numeric_limits<int64_t>::max();
  if (num_ <= -9223372036854775808.0) return std::numeric_limits<int64_t>::min();
  return static_cast<int64_t>(num_);
}

const std::string& Json::as_string() const {
  assert(type_ == Type::String);
  return str_;
}

const std::vector<Json>& Json::items() const {
  assert(type_ == Type::Array);
  return arr_;
}

const std::vector<std::pair<std::string, Json>>& Json::members() const {
  assert(type_ == Type::Object);
  return obj_;
}

const Json* Json::find(const std::string& key) const {
  if (type_ != Type::Object) return nullptr;
  for (const auto& kv : obj_)
    if (kv.first == key) return &kv.second;
  return nullptr;
}

Json& Json::set(const std::string& key, Json value) {
  assert(type_ == Type::Object);
  for (auto& kv : obj_) {
    if (kv.first == key) {
      kv.second = std::move(value);
      return kv.second;
    }
  }
  obj_.emplace_back(key, std::move(value));
  return obj_.back().second;
}

Json& Json::push(Json value) {
  assert(type_ == Type::Array);
  arr_.push_back(std::move(value));
  return arr_.back();
}

size_t Json::size() const {
  if (type_ == Type::Array) return arr_.size();
  if (type_ == Type::Object) return obj_.size();
  return 0;
}

// ---------------------------------------------------------------------------------------
// Writer

namespace {

// Length of the well-formed UTF-8 sequence starting at s[i], or 0 if it is malformed
// (overlong forms, surrogates and code points above U+10FFFF are malformed, per RFC 3629).
size_t utf8_sequence_length(const unsigned char* s, size_t n, size_t i) {
  unsigned char c = s[i];
  if (c < 0x80) return 1;
  size_t len;
  uint32_t cp;
  if (c >= 0xC2 && c <= 0xDF) {
    len = 2;
    cp = c & 0x1F;
  } else if (c >= 0xE0 && c <= 0xEF) {
    len = 3;
    cp = c & 0x0F;
  } else if (c >= 0xF0 && c <= 0xF4) {
    len = 4;
    cp = c & 0x07;
  } else {
    return 0;
  }
  if (i + len > n) return 0;
  for (size_t k = 1; k < len; ++k) {
    unsigned char cc = s[i + k];
    if ((cc & 0xC0) != 0x80) return 0;
    cp = (cp << 6) | (cc & 0x3F);
  }
  if (len == 3 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) return 0;
  if (len == 4 && (cp < 0x10000 || cp > 0x10FFFF)) return 0;
  return len;
}

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

void append_quoted(std::string& out, const std::string& s) {
  static const char* hex = "0123456789abcdef";
  out += '"';
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const size_t n = s.size();
  for (size_t i = 0; i < n;) {
    unsigned char c = p[i];
    if (c >= 0x80) {
      // Strings built in code may hold arbitrary bytes (e.g. a file name in a foreign
      // encoding); emitting them raw would make the whole line invalid JSON for readers.
      size_t len = utf8_sequence_length(p, n, i);
      if (len == 0) {
        out += "\xEF\xBF\xBD";  // U+FFFD REPLACEMENT CHARACTER
        ++i;
      } else {
        out.append(s, i, len);
        i += len;
      }
      continue;
    }
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (c < 0x20 || c == 0x7F) {
          out += "\\u00";
          out += hex[c >> 4];
          out += hex[c & 0xF];
        } else {
          out += static_cast<char>(c);
        }
    }
    ++i;
  }
  out += '"';
}

// Formats a double as JavaScript's Number.prototype.toString does (ECMA-262
// Number::toString): the shortest digits that round-trip, in fixed notation for
// 1e-7 <= |d| < 1e21 and exponent notation otherwise. The extension's TypeScript writes
// numbers the same way, so both sides produce identical JSON. std::to_chars is
// locale-independent (printf would write "0,5" under a German LC_NUMERIC).
void append_double(std::string& out, double d) {
  if (!std::isfinite(d)) {
    // JSON has no NaN/Infinity; null is what JavaScript's JSON.stringify writes too.
    out += "null";
    return;
  }
  if (d == 0) {
    out += '0';
    return;
  }
  char buf[64];
  auto res = std::to_chars(buf, buf + sizeof buf, d, std::chars_format::scientific);
  std::string sci(buf, res.ptr);  // e.g. "-1.2345e-07"
  if (sci[0] == '-') {
    out += '-';
    sci.erase(0, 1);
  }
  const size_t e_pos = sci.find('e');
  std::string digits = sci.substr(0, e_pos);
  digits.erase(std::remove(digits.begin(), digits.end(), '.'), digits.end());
  const int exp10 = std::atoi(sci.c_str() + e_pos + 1);
  const int k = static_cast<int>(digits.size());
  const int n = exp10 + 1;  // the decimal point sits after n digits
  if (k <= n && n <= 21) {
    out += digits;
    out.append(static_cast<size_t>(n - k), '0');
  } else if (0 < n && n <= 21) {
    out.append(digits, 0, static_cast<size_t>(n));
    out += '.';
    out.append(digits, static_cast<size_t>(n), std::string::npos);
  } else if (-6 < n && n <= 0) {
    out += "0.";
    out.append(static_cast<size_t>(-n), '0');
    out += digits;
  } else {
    out += digits[0];
    if (k > 1) {
      out += '.';
      out.append(digits, 1, std::string::npos);
    }
    out += 'e';
    out += n - 1 >= 0 ? '+' : '-';
    out += std::to_string(std::abs(n - 1));
  }
}

void dump_value(const Json& v, std::string& out, bool pretty, int indent) {
  auto newline = [&](int level) {
    out += '\n';
    out.append(static_cast<size_t>(level) * 2, ' ');
  };
  switch (v.type()) {
    case Json::Type::Null: out += "null"; break;
    case Json::Type::Bool: out += v.as_bool() ? "true" : "false"; break;
    case Json::Type::Number:
      if (v.is_integer())
        out += std::to_string(v.as_int());
      else
        append_double(out, v.as_number());
      break;
    case Json::Type::String: append_quoted(out, v.as_string()); break;
    case Json::Type::Array: {
      const auto& items = v.items();
      if (items.empty()) {
        out += "[]";
        break;
      }
      out += '[';
      for (size_t i = 0; i < items.size(); ++i) {
        if (i) out += ',';
        if (pretty) newline(indent + 1);
        dump_value(items[i], out, pretty, indent + 1);
      }
      if (pretty) newline(indent);
      out += ']';
      break;
    }
    case Json::Type::Object: {
      const auto& members = v.members();
      if (members.empty()) {
        out += "{}";
        break;
      }
      out += '{';
      for (size_t i = 0; i < members.size(); ++i) {
        if (i) out += ',';
        if (pretty) newline(indent + 1);
        append_quoted(out, members[i].first);
        out += pretty ? ": " : ":";
        dump_value(members[i].second, out, pretty, indent + 1);
      }
      if (pretty) newline(indent);
      out += '}';
      break;
    }
  }
}

}  // namespace

std::string Json::dump(bool pretty) const {
  std::string out;
  dump_value(*this, out, pretty, 0);
  return out;
}

std::string json_quote(const std::string& s) {
  std::string out;
  out.reserve(s.size() + 2);
  append_quoted(out, s);
  return out;
}

// ---------------------------------------------------------------------------------------
// Parser (RFC 8259, strict: no comments, no trailing commas, no NaN, no single quotes)

namespace {
constexpr int kMaxDepth = 256;
}

class JsonParser {
 public:
  JsonParser(const std::string& text, JsonParseError& err)
      : p_(text.data()), n_(text.size()), err_(err) {}

  bool parse(Json& out) {
    // RFC 8259 section 8.1 lets parsers ignore a byte order mark; editors on Windows add one.
    if (n_ >= 3 && std::memcmp(p_, "\xEF\xBB\xBF", 3) == 0) pos_ = 3;
    skip_ws();
    if (pos_ >= n_) return fail("empty input: expected a JSON value");
    if (!parse_value(out, 0)) return false;
    skip_ws();
    if (pos_ < n_) return fail("unexpected " + describe_here() + " after the end of the JSON value");
    return true;
  }

 private:
  const char* p_;
  size_t n_;
  size_t pos_ = 0;
  int line_ = 1;
  size_t line_start_ = 0;
  JsonParseError& err_;

  int column_at(size_t pos) const {
    // Columns count characters, not bytes: skip UTF-8 continuation bytes.
    int col = 1;
    for (size_t i = line_start_; i < pos && i < n_; ++i)
      if ((static_cast<unsigned char>(p_[i]) & 0xC0) != 0x80) ++col;
    return col;
  }

  bool fail_at(size_t pos, const std::string& msg) {
    err_.message = msg;
    err_.line = line_;
    err_.column = column_at(pos);
    return false;
  }
  bool fail(const std::string& msg) { return fail_at(pos_, msg); }

  std::string describe_here() const {
    if (pos_ >= n_) return "end of input";
    unsigned char c = static_cast<unsigned char>(p_[pos_]);
    if (c >= 0x20 && c < 0x7F) return std::string("character '") + static_cast<char>(c) + "'";
    char buf[32];
    std::snprintf(buf, sizeof buf, "byte 0x%02X", c);
    return buf;
  }

  void skip_ws() {
    while (pos_ < n_) {
      char c = p_[pos_];
      if (c == ' ' || c == '\t' || c == '\r') {
        ++pos_;
      } else if (c == '\n') {
        ++pos_;
        ++line_;
        line_start_ = pos_;
      } else {
        break;
      }
    }
  }

  bool parse_value(Json& out, int depth) {
    out = Json();
    out.line_ = line_;
    if (pos_ >= n_) return fail("unexpected end of input: expected a value");
    char c = p_[pos_];
    switch (c) {
      case '{': return parse_object(out, depth + 1);
      case '[': return parse_array(out, depth + 1);
      case '"':
        out.type_ = Json::Type::String;
        return parse_string(out.str_);
      case 't': return parse_literal("true", out, Json::Type::Bool, true);
      case 'f': return parse_literal("false", out, Json::Type::Bool, false);
      case 'n': return parse_literal("null", out, Json::Type::Null, false);
      default:
        if (c == '-' || (c >= '0' && c <= '9')) return parse_number(out);
        if (c == ']' || c == '}') return fail("unexpected " + describe_here() + ": expected a value (trailing comma?)");
        if (c == '\'') return fail("strings must use double quotes, not single quotes");
        return fail("unexpected " + describe_here() + ": expected a value");
    }
  }

  bool parse_literal(const char* word, Json& out, Json::Type type, bool b) {
    size_t len = std::strlen(word);
    if (n_ - pos_ < len || std::memcmp(p_ + pos_, word, len) != 0)
      return fail("invalid literal: expected '" + std::string(word) + "'");
    pos_ += len;
    out.type_ = type;
    out.bool_ = b;
    return true;
  }

  bool parse_number(Json& out) {
    const size_t start = pos_;
    bool negative = false;
    if (p_[pos_] == '-') {
      negative = true;
      ++pos_;
    }
    auto is_digit = [&](size_t i) { return i < n_ && p_[i] >= '0' && p_[i] <= '9'; };
    if (!is_digit(pos_)) return fail("invalid number: expected a digit");
    if (p_[pos_] == '0') {
      ++pos_;
      if (is_digit(pos_)) return fail_at(start, "invalid number: leading zeros are not allowed");
    } else {
      while (is_digit(pos_)) ++pos_;
    }
    const size_t int_end = pos_;
    bool is_int = true;
    if (pos_ < n_ && p_[pos_] == '.') {
      is_int = false;
      ++pos_;
      if (!is_digit(pos_)) return fail("invalid number: expected a digit after '.'");
      while (is_digit(pos_)) ++pos_;
    }
    if (pos_ < n_ && (p_[pos_] == 'e' || p_[pos_] == 'E')) {
      is_int = false;
      ++pos_;
      if (pos_ < n_ && (p_[pos_] == '+' || p_[pos_] == '-')) ++pos_;
      if (!is_digit(pos_)) return fail("invalid number: expected a digit in the exponent");
      while (is_digit(pos_)) ++pos_;
    }
    out.type_ = Json::Type::Number;
    if (is_int) {
      // Accumulate as a negative number so INT64_MIN fits; overflow falls back to double.
      int64_t acc = 0;
      bool overflow = false;
      for (size_t i = start + (negative ? 1 : 0); i < int_end; ++i) {
        int d = p_[i] - '0';
        if (acc < (std::numeric_limits<int64_t>::min() + d) / 10) {
          overflow = true;
          break;
        }
        acc = acc * 10 - d;
      }
      if (!overflow && !negative && acc == std::numeric_limits<int64_t>::min()) overflow = true;
      if (!overflow) {
        out.integer_ = true;
        out.int_ = negative ? acc : -acc;
        out.num_ = static_cast<double>(out.int_);
        return true;
      }
    }
    double value = 0;
    auto res = std::from_chars(p_ + start, p_ + pos_, value);
    if (res.ec == std::errc::result_out_of_range) {
      // from_chars leaves `value` unspecified on range errors; strtod tells overflow
      // (infinity) from underflow (a denormal or zero, which is fine to keep).
      std::string token(p_ + start, pos_ - start);
      errno = 0;
      value = std::strtod(token.c_str(), nullptr);
      if (std::isinf(value)) return fail_at(start, "number out of range: " + token);
    } else if (res.ec != std::errc() || res.ptr != p_ + pos_) {
      return fail_at(start, "invalid number");
    }
    out.num_ = value;
    return true;
  }

  bool parse_hex4(uint32_t& cp) {
    if (n_ - pos_ < 4) return fail("invalid \\u escape: expected 4 hex digits");
    cp = 0;
    for (int k = 0; k < 4; ++k) {
      char h = p_[pos_ + k];
      uint32_t v;
      if (h >= '0' && h <= '9') v = h - '0';
      else if (h >= 'a' && h <= 'f') v = h - 'a' + 10;
      else if (h >= 'A' && h <= 'F') v = h - 'A' + 10;
      else return fail_at(pos_ + k, "invalid \\u escape: expected 4 hex digits");
      cp = (cp << 4) | v;
    }
    pos_ += 4;
    return true;
  }

  bool parse_string(std::string& out) {
    const size_t open = pos_;
    ++pos_;  // opening quote
    const auto* u = reinterpret_cast<const unsigned char*>(p_);
    while (true) {
      // Copy the run of plain characters in one go.
      size_t run = pos_;
      while (run < n_ && u[run] != '"' && u[run] != '\\' && u[run] >= 0x20 && u[run] < 0x80) ++run;
      out.append(p_ + pos_, run - pos_);
      pos_ = run;
      if (pos_ >= n_) return fail_at(open, "unterminated string");
      unsigned char c = u[pos_];
      if (c == '"') {
        ++pos_;
        return true;
      }
      if (c < 0x20) {
        if (c == '\n') return fail_at(open, "unterminated string (raw newline inside a string)");
        return fail("control character inside a string must be escaped");
      }
      if (c >= 0x80) {
        size_t len = utf8_sequence_length(u, n_, pos_);
        if (len == 0) return fail("invalid UTF-8 in string");
        out.append(p_ + pos_, len);
        pos_ += len;
        continue;
      }
      // Backslash escape.
      ++pos_;
      if (pos_ >= n_) return fail_at(open, "unterminated string");
      char e = p_[pos_++];
      switch (e) {
        case '"': out += '"'; break;
        case '\\': out += '\\'; break;
        case '/': out += '/'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          const size_t esc = pos_ - 2;
          uint32_t cp;
          if (!parse_hex4(cp)) return false;
          if (cp >= 0xDC00 && cp <= 0xDFFF)
            return fail_at(esc, "invalid \\u escape: lone low surrogate");
          if (cp >= 0xD800 && cp <= 0xDBFF) {
            if (n_ - pos_ < 2 || p_[pos_] != '\\' || p_[pos_ + 1] != 'u')
              return fail_at(esc, "invalid \\u escape: high surrogate not followed by a low surrogate");
            pos_ += 2;
            uint32_t lo;
            if (!parse_hex4(lo)) return false;
            if (lo < 0xDC00 || lo > 0xDFFF)
              return fail_at(esc, "invalid \\u escape: high surrogate not followed by a low surrogate");
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
          }
          append_utf8(out, cp);
          break;
        }
        default:
          pos_ -= 2;
          return fail("invalid escape '\\" + std::string(1, e >= 0x20 && e < 0x7F ? e : '?') + "' in string");
      }
    }
  }

  bool parse_array(Json& out, int depth) {
    if (depth > kMaxDepth) return fail("nesting deeper than 256 levels");
    out.type_ = Json::Type::Array;
    ++pos_;
    skip_ws();
    if (pos_ < n_ && p_[pos_] == ']') {
      ++pos_;
      return true;
    }
    while (true) {
      skip_ws();
      out.arr_.emplace_back();
      if (!parse_value(out.arr_.back(), depth)) return false;
      skip_ws();
      if (pos_ >= n_) return fail("unexpected end of input: expected ',' or ']' in array");
      if (p_[pos_] == ',') {
        ++pos_;
        continue;
      }
      if (p_[pos_] == ']') {
        ++pos_;
        return true;
      }
      return fail("unexpected " + describe_here() + ": expected ',' or ']' in array");
    }
  }

  bool parse_object(Json& out, int depth) {
    if (depth > kMaxDepth) return fail("nesting deeper than 256 levels");
    out.type_ = Json::Type::Object;
    ++pos_;
    skip_ws();
    if (pos_ < n_ && p_[pos_] == '}') {
      ++pos_;
      return true;
    }
    // Duplicate keys are ambiguous (RFC 8259 section 4): a safetensors header or config
    // with two entries of the same name is rejected rather than silently picking one.
    std::unordered_set<std::string> seen;
    while (true) {
      skip_ws();
      if (pos_ >= n_) return fail("unexpected end of input: expected a member name in object");
      if (p_[pos_] != '"') {
        if (p_[pos_] == '}') return fail("unexpected '}': trailing comma in object");
        return fail("unexpected " + describe_here() + ": expected a double-quoted member name");
      }
      const size_t key_pos = pos_;
      std::string key;
      if (!parse_string(key)) return false;
      if (!seen.insert(key).second) return fail_at(key_pos, "duplicate key \"" + key + "\" in object");
      skip_ws();
      if (pos_ >= n_ || p_[pos_] != ':')
        return fail("unexpected " + describe_here() + ": expected ':' after member name");
      ++pos_;
      skip_ws();
      out.obj_.emplace_back(std::move(key), Json());
      if (!parse_value(out.obj_.back().second, depth)) return false;
      skip_ws();
      if (pos_ >= n_) return fail("unexpected end of input: expected ',' or '}' in object");
      if (p_[pos_] == ',') {
        ++pos_;
        continue;
      }
      if (p_[pos_] == '}') {
        ++pos_;
        return true;
      }
      return fail("unexpected " + describe_here() + ": expected ',' or '}' in object");
    }
  }
};

bool json_parse(const std::string& text, Json& out, JsonParseError& err) {
  err = JsonParseError{};
  Json result;
  JsonParser parser(text, err);
  if (!parser.parse(result)) return false;
  out = std::move(result);
  return true;
}

Json json_parse_file(const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) {
    int e = errno;
    throw InputError("file_read", "cannot open " + path + ": " + std::strerror(e), path, "", 0,
                     e == ENOENT ? "check that the file exists" : "check the file's permissions");
  }
  std::string text;
  char buf[1 << 16];
  size_t got;
  while ((got = std::fread(buf, 1, sizeof buf, f)) > 0) text.append(buf, got);
  bool read_error = std::ferror(f) != 0;
  int e = errno;
  std::fclose(f);
  if (read_error)
    throw InputError("file_read", "cannot read " + path + ": " + std::strerror(e), path, "", 0,
                     "check that the path is a readable file, not a directory");
  Json out;
  JsonParseError err;
  if (!json_parse(text, out, err)) {
    throw InputError("json_parse",
                     path + ":" + std::to_string(err.line) + ":" + std::to_string(err.column) + ": " +
                         err.message,
                     path, "", err.line,
                     "fix the JSON at line " + std::to_string(err.line) + ", column " +
                         std::to_string(err.column) +
                         " (common causes: a trailing comma, a missing quote or comma, comments)");
  }
  return out;
}

}  // namespace lora
