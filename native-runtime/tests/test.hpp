#pragma once
// A minimal test harness for the runtime's C++ tests: TEST(name) registers a function;
// CHECK* record failures without aborting the test; main() (test_main.cpp) runs all tests,
// or those whose name contains argv[1], and ends with the line "N passed, N failed".
#include <cmath>
#include <cstdio>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

namespace lora_test {

struct TestCase {
  const char* name;
  std::function<void()> fn;
};
std::vector<TestCase>& registry();
void record_failure(const char* file, int line, const std::string& what);
// Marks the running test as skipped, with the reason printed.
void skip(const std::string& reason);

struct Registrar {
  Registrar(const char* name, std::function<void()> fn) { registry().push_back({name, std::move(fn)}); }
};

}  // namespace lora_test

#define LT_CAT2(a, b) a##b
#define LT_CAT(a, b) LT_CAT2(a, b)
#define TEST(name)                                                               \
  static void LT_CAT(test_fn_, name)();                                          \
  static ::lora_test::Registrar LT_CAT(test_reg_, name)(#name, LT_CAT(test_fn_, name)); \
  static void LT_CAT(test_fn_, name)()

#define CHECK(cond)                                                              \
  do {                                                                           \
    if (!(cond)) ::lora_test::record_failure(__FILE__, __LINE__, "CHECK(" #cond ")"); \
  } while (0)

#define CHECK_EQ(a, b)                                                           \
  do {                                                                           \
    auto lt_a = (a);                                                             \
    auto lt_b = (b);                                                             \
    if (!(lt_a == lt_b)) {                                                       \
      std::ostringstream lt_os;                                                  \
      lt_os << "CHECK_EQ(" #a ", " #b "): " << lt_a << " vs " << lt_b;           \
      ::lora_test::record_failure(__FILE__, __LINE__, lt_os.str());              \
    }                                                                            \
  } while (0)

// |a - b| <= atol + rtol * |b|
#define CHECK_NEAR(a, b, atol, rtol)                                             \
  do {                                                                           \
    double lt_a = (a), lt_b = (b);                                               \
    if (!(std::fabs(lt_a - lt_b) <= (atol) + (rtol) * std::fabs(lt_b))) {       \
      std::ostringstream lt_os;                                                  \
      lt_os.precision(9);                                                        \
      lt_os << "CHECK_NEAR(" #a ", " #b "): " << lt_a << " vs " << lt_b;         \
      ::lora_test::record_failure(__FILE__, __LINE__, lt_os.str());              \
    }                                                                            \
  } while (0)

// Runs `stmt` and checks it throws lora::InputError whose code equals `expected_code`.
#define CHECK_INPUT_ERROR(stmt, expected_code)                                   \
  do {                                                                           \
    bool lt_thrown = false;                                                      \
    try {                                                                        \
      stmt;                                                                      \
    } catch (const lora::InputError& lt_e) {                                     \
      lt_thrown = true;                                                          \
      if (std::string(lt_e.code) != (expected_code))                             \
        ::lora_test::record_failure(__FILE__, __LINE__,                          \
                                    std::string("wrong error code: ") + lt_e.code + " (" + lt_e.what() + ")"); \
    } catch (const std::exception& lt_e) {                                       \
      lt_thrown = true;                                                          \
      ::lora_test::record_failure(__FILE__, __LINE__, std::string("not an InputError: ") + lt_e.what()); \
    }                                                                            \
    if (!lt_thrown) ::lora_test::record_failure(__FILE__, __LINE__, "expected InputError " expected_code); \
  } while (0)
