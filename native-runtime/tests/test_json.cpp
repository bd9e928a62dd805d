#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <limits>
#include <random>
#include <string>
#include <unistd.h>

#include "common/errors.hpp"
#include "common/json.hpp"
#include "temp_dir.hpp"
#include "test.hpp"

using lora::Json;
using lora::JsonParseError;

namespace {

Json parse_ok(const std::string& text) {
  Json j;
  JsonParseError err;
  bool ok = lora::json_parse(text, j, err);
  if (!ok) ::lora_test::record_failure(__FILE__, __LINE__, "parse failed: " + text + " -> " + err.message);
  return j;
}

JsonParseError parse_bad(const std::string& text) {
  Json j;
  JsonParseError err;
  if (lora::json_parse(text, j, err))
    ::lora_test::record_failure(__FILE__, __LINE__, "parse unexpectedly succeeded: " + text);
  return err;
}

}  // namespace

TEST(json_parses_scalars_and_containers) {
  Json j = parse_ok(R"( {"a": 1, "b": [true, false, null], "c": "x", "d": -2.5e3, "e": {}} )");
  CHECK(j.is_object());
  CHECK_EQ(j.size(), size_t(5));
  CHECK(j.find("a")->is_integer());
  CHECK_EQ(j.find("a")->as_int(), int64_t(1));
  CHECK_EQ(j.find("b")->size(), size_t(3));
  CHECK(j.find("b")->items()[0].as_bool());
  CHECK(!j.find("b")->items()[1].as_bool());
  CHECK(j.find("b")->items()[2].is_null());
  CHECK_EQ(j.find("c")->as_string(), std::string("x"));
  CHECK(!j.find("d")->is_integer());
  CHECK_EQ(j.find("d")->as_number(), -2500.0);
  CHECK(j.find("e")->is_object());
  CHECK(j.find("missing") == nullptr);
  // Members keep their order of appearance.
  CHECK_EQ(j.members()[0].first, std::string("a"));
  CHECK_EQ(j.members()[4].first, std::string("e"));
}

TEST(json_integers_stay_exact) {
  Json big = parse_ok("9007199254740993");  // 2^53 + 1: not representable as a double
  CHECK(big.is_integer());
  CHECK_EQ(big.as_int(), int64_t(9007199254740993LL));
  Json max = parse_ok("9223372036854775807");
  CHECK(max.is_integer());
  CHECK_EQ(max.as_int(), std::numeric_limits<int64_t>::max());
  Json min = parse_ok("-9223372036854775808");
  CHECK(min.is_integer());
  CHECK_EQ(min.as_int(), std::numeric_limits<int64_t>::min());
  // One past int64 range: a number, but no longer an exact integer.
  Json over = parse_ok("9223372036854775808");
  CHECK(over.is_number());
  CHECK(!over.is_integer());
  CHECK_EQ(over.as_number(), 9223372036854775808.0);
  CHECK(!parse_ok("1.0").is_integer());
  CHECK(!parse_ok("1e2").is_integer());
  CHECK_EQ(parse_ok("1e2").as_number(), 100.0);
  CHECK(parse_ok("-0").is_integer());
  CHECK_EQ(parse_ok("1E-2").as_number(), 0.01);
  CHECK_EQ(parse_ok("1e-400").as_number(), 0.0);  // underflow rounds to zero, not an error
}

TEST(json_line_numbers_of_values) {
  Json j = parse_ok("{\n  \"a\": 1,\n  \"b\":\n    [2]\n}");
  CHECK_EQ(j.line(), 1);
  CHECK_EQ(j.find("a")->line(), 2);
  CHECK_EQ(j.find("b")->line(), 4);
  CHECK_EQ(Json(3).line(), 0);
}

TEST(json_string_escapes_and_unicode) {
  CHECK_EQ(parse_ok(R"("a\"b\\c\/d\b\f\n\r\t")").as_string(), std::string("a\"b\\c/d\b\f\n\r\t"));
  CHECK_EQ(parse_ok(R"("\u0041\u00e9\u20AC")").as_string(), std::string("A\xC3\xA9\xE2\x82\xAC"));
  // Surrogate pair -> one 4-byte UTF-8 sequence (U+1F600).
  CHECK_EQ(parse_ok(R"("\ud83d\ude00")").as_string(), std::string("\xF0\x9F\x98\x80"));
  CHECK_EQ(parse_ok(R"("\u0000")").as_string(), std::string(1, '\0'));
  // Raw UTF-8 passes through.
  CHECK_EQ(parse_ok("\"\xE6\x97\xA5\"").as_string(), std::string("\xE6\x97\xA5"));
  parse_bad(R"("\ud83d")");          // lone high surrogate
  parse_bad(R"("\ud83d\u0041")");    // high surrogate + non-low
  parse_bad(R"("\ude00")");          // lone low surrogate
  parse_bad(R"("\u12")");
  parse_bad(R"("\u12G4")");
  parse_bad(R"("\x41")");
  parse_bad("\"a\tb\"");             // raw control character
  parse_bad("\"\xC0\xAF\"");         // overlong UTF-8
  parse_bad("\"\xED\xA0\x80\"");     // UTF-8-encoded surrogate
  parse_bad("\"\xF4\x90\x80\x80\""); // above U+10FFFF
  parse_bad("\"\xE6\x97\"");         // truncated sequence
}

TEST(json_rejects_invalid_documents_with_positions) {
  JsonParseError e = parse_bad("{\n  \"a\": 1,\n}");
  CHECK_EQ(e.line, 3);
  CHECK_EQ(e.column, 1);
  e = parse_bad("[1,\n 2,\n  x]");
  CHECK_EQ(e.line, 3);
  CHECK_EQ(e.column, 3);
  e = parse_bad("{\"a\" 1}");
  CHECK_EQ(e.line, 1);
  CHECK_EQ(e.column, 6);
  e = parse_bad("{\"k\": \"\xC3\xA9\xC3\xA9\", x}");  // columns count characters, not bytes
  CHECK_EQ(e.column, 13);
  const char* bad[] = {
      "", "   ", "[", "]", "{", "}", "[1,]", "[,1]", "{\"a\":1,}", "{,}", "{'a':1}", "{a:1}",
      "01", "-", "+1", "1.", ".5", "1e", "1e+", "0x10", "NaN", "Infinity", "-Infinity",
      "tru", "nul", "falsey", "[1 2]", "{\"a\":1 \"b\":2}", "\"abc", "\"abc\\", "1 2", "[] []",
      "/* c */ 1", "1e400", "-1e400", "{\"a\":1,\"a\":2}", "\"\\", "[\"a\"\n,", "\x01",
  };
  for (const char* text : bad) {
    Json j;
    JsonParseError err;
    if (lora::json_parse(text, j, err)) {
      ::lora_test::record_failure(__FILE__, __LINE__, std::string("accepted: ") + text);
    } else {
      CHECK(!err.message.empty());
      CHECK(err.line >= 1);
      CHECK(err.column >= 1);
    }
  }
}

TEST(json_nesting_limit) {
  std::string ok_depth = std::string(256, '[') + std::string(256, ']');
  parse_ok(ok_depth);
  std::string too_deep = std::string(257, '[') + std::string(257, ']');
  JsonParseError e = parse_bad(too_deep);
  CHECK(e.message.find("nesting") != std::string::npos);
  // Far deeper than the limit must fail cleanly, not overflow the stack.
  parse_bad(std::string(1000000, '['));
  std::string objs;
  for (int i = 0; i < 300; ++i) objs += "{\"a\":";
  parse_bad(objs + "1" + std::string(300, '}'));
}

TEST(json_accepts_bom_and_whitespace) {
  CHECK_EQ(parse_ok("\xEF\xBB\xBF {\"a\":1}\r\n\t").find("a")->as_int(), int64_t(1));
}

TEST(json_dump_compact_and_pretty) {
  Json j = Json::object();
  j.set("v", 1);
  j.set("name", "x\"y\n\x01");
  j.set("lr", 2e-4);
  j.set("f", 1.0);
  j.set("n", Json());
  Json arr = Json::array();
  arr.push(true);
  arr.push(int64_t(-3));
  j.set("a", arr);
  j.set("e", Json::object());
  j.set("v", 2);  // replaces, keeps position
  CHECK_EQ(j.dump(), std::string(R"({"v":2,"name":"x\"y\n\u0001","lr":0.0002,"f":1,"n":null,"a":[true,-3],"e":{}})"));
  CHECK_EQ(j.dump(true), std::string("{\n  \"v\": 2,\n  \"name\": \"x\\\"y\\n\\u0001\",\n  \"lr\": 0.0002,\n"
                                     "  \"f\": 1,\n  \"n\": null,\n  \"a\": [\n    true,\n    -3\n  ],\n"
                                     "  \"e\": {}\n}"));
  Json back = parse_ok(j.dump(true));
  CHECK_EQ(back.dump(), j.dump());
  CHECK_EQ(Json(std::numeric_limits<double>::infinity()).dump(), std::string("null"));
  CHECK_EQ(Json(uint64_t(18446744073709551615ULL)).dump(), std::string("18446744073709552000"));
  CHECK_EQ(Json(int64_t(9007199254740993LL)).dump(), std::string("9007199254740993"));
  CHECK_EQ(Json(uint32_t(4294967295u)).dump(), std::string("4294967295"));
  CHECK(Json(uint32_t(7)).is_integer());
}

TEST(json_quote_escapes_controls_and_repairs_utf8) {
  CHECK_EQ(lora::json_quote("a\tb"), std::string("\"a\\tb\""));
  CHECK_EQ(lora::json_quote(std::string("\0\x1f\x7f", 3)), std::string("\"\\u0000\\u001f\\u007f\""));
  CHECK_EQ(lora::json_quote("\xC3\xA9"), std::string("\"\xC3\xA9\""));
  // An invalid byte becomes U+FFFD so the output is always valid JSON.
  CHECK_EQ(lora::json_quote("a\xFF" "b"), std::string("\"a\xEF\xBF\xBD" "b\""));
  Json j;
  JsonParseError err;
  CHECK(lora::json_parse(lora::json_quote(std::string("\xC0\x80\xED\xA0\x80", 5)), j, err));
}

TEST(json_doubles_round_trip) {
  std::mt19937_64 rng(1234);
  for (int i = 0; i < 20000; ++i) {
    uint64_t bits = rng();
    double d;
    std::memcpy(&d, &bits, sizeof d);
    if (!std::isfinite(d)) continue;
    Json j(d);
    Json back = parse_ok(j.dump());
    if (back.as_number() != d) {
      ::lora_test::record_failure(__FILE__, __LINE__, "double did not round-trip: " + j.dump());
      break;
    }
  }
  // Formatted as JavaScript's Number.prototype.toString, like the TypeScript side.
  CHECK_EQ(Json(0.1).dump(), std::string("0.1"));
  CHECK_EQ(Json(-2.5).dump(), std::string("-2.5"));
  CHECK_EQ(Json(1e21).dump(), std::string("1e+21"));
  CHECK_EQ(Json(1e20).dump(), std::string("100000000000000000000"));
  CHECK_EQ(Json(123.456).dump(), std::string("123.456"));
  CHECK_EQ(Json(1e-6).dump(), std::string("0.000001"));
  CHECK_EQ(Json(1.5e-7).dump(), std::string("1.5e-7"));
  CHECK_EQ(Json(-0.0).dump(), std::string("0"));
  CHECK_EQ(Json(2.0).dump(), std::string("2"));
  CHECK_EQ(Json(0.30000000000000004).dump(), std::string("0.30000000000000004"));
  CHECK_EQ(Json(1e300).dump(), std::string("1e+300"));
  CHECK_EQ(Json(5e-324).dump(), std::string("5e-324"));
  CHECK_EQ(Json(-1.7976931348623157e308).dump(), std::string("-1.7976931348623157e+308"));
  CHECK_EQ(parse_ok("4.9406564584124654e-324").as_number(), 5e-324);
}

// Random mutations of valid documents: the parser must return (true or false) without
// crashing, and whatever it accepts must survive a dump/parse round trip unchanged.
TEST(json_random_mutations_never_crash) {
  const std::string seeds[] = {
      R"({"architectures":["LlamaForCausalLM"],"hidden_size":64,"rope_scaling":{"factor":8.0,"rope_type":"llama3"},"x":null})",
      R"([1,-2.5e-3,"a\u00e9\ud83d\ude00",true,false,null,{"k":[[],{}]}])",
      R"({"w":{"dtype":"BF16","shape":[2,3],"data_offsets":[0,12]},"__metadata__":{"format":"pt"}})",
  };
  const char alphabet[] = "{}[]\",:\\/-+.eE0123456789tfnulrasu \n\t\x01\x80\xC3\xA9\xFF";
  std::mt19937 rng(42);
  int accepted = 0;
  for (int iter = 0; iter < 30000; ++iter) {
    std::string s = seeds[iter % 3];
    int edits = 1 + static_cast<int>(rng() % 4);
    for (int k = 0; k < edits; ++k) {
      size_t pos = s.empty() ? 0 : rng() % (s.size() + 1);
      switch (rng() % 4) {
        case 0:
          if (pos < s.size()) s.erase(pos, 1 + rng() % 3);
          break;
        case 1: s.insert(pos, 1, alphabet[rng() % (sizeof alphabet - 1)]); break;
        case 2:
          if (pos < s.size()) s[pos] = alphabet[rng() % (sizeof alphabet - 1)];
          break;
        case 3: s.resize(pos); break;
      }
    }
    Json j;
    JsonParseError err;
    if (lora::json_parse(s, j, err)) {
      ++accepted;
      Json back;
      if (!lora::json_parse(j.dump(), back, err) || back.dump() != j.dump()) {
        ::lora_test::record_failure(__FILE__, __LINE__, "accepted text does not round-trip: " + s);
        break;
      }
    } else if (err.line < 1 || err.column < 1 || err.message.empty()) {
      ::lora_test::record_failure(__FILE__, __LINE__, "error without position: " + s);
      break;
    }
  }
  CHECK(accepted > 0);  // some mutations (e.g. digit swaps) stay valid
}

TEST(json_parse_file_errors) {
  lora_test::TempDir tmp("json");
  const std::string missing = tmp / "missing.json";
  CHECK_INPUT_ERROR(lora::json_parse_file(missing), "file_read");
  try {
    lora::json_parse_file(missing);
  } catch (const lora::InputError& e) {
    CHECK_EQ(e.file, missing);
    CHECK(!e.hint.empty());
  }
  const std::string bad = tmp / "bad.json";
  {
    std::ofstream f(bad);
    f << "{\n  \"hidden_size\": 64,\n  \"vocab_size\": 32,\n}\n";
  }
  CHECK_INPUT_ERROR(lora::json_parse_file(bad), "json_parse");
  try {
    lora::json_parse_file(bad);
  } catch (const lora::InputError& e) {
    CHECK_EQ(e.file, bad);
    CHECK_EQ(e.line, int64_t(4));
    CHECK(std::string(e.what()).find(":4:1:") != std::string::npos);
    CHECK(e.hint.find("line 4") != std::string::npos);
  }
  const std::string good = tmp / "good.json";
  {
    std::ofstream f(good);
    f << "{\"a\": [1, 2]}";
  }
  CHECK_EQ(lora::json_parse_file(good).find("a")->size(), size_t(2));
  // A directory is not a readable JSON file.
  CHECK_INPUT_ERROR(lora::json_parse_file("/"), "file_read");
}
