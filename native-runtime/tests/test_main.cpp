#include <cstring>
#include <exception>

#include "test.hpp"

namespace lora_test {

namespace {
int g_failures_in_test = 0;
bool g_skipped = false;
}  // namespace

std::vector<TestCase>& registry() {
  static std::vector<TestCase> tests;
  return tests;
}

void record_failure(const char* file, int line, const std::string& what) {
  ++g_failures_in_test;
  std::fprintf(stdout, "    %s:%d: %s\n", file, line, what.c_str());
}

void skip(const std::string& reason) {
  g_skipped = true;
  std::fprintf(stdout, "    skipped: %s\n", reason.c_str());
}

}  // namespace lora_test

int main(int argc, char** argv) {
  using namespace lora_test;
  const char* filter = argc > 1 ? argv[1] : nullptr;
  int passed = 0, failed = 0, skipped = 0;
  for (auto& t : registry()) {
    if (filter && !std::strstr(t.name, filter)) continue;
    g_failures_in_test = 0;
    g_skipped = false;
    try {
      t.fn();
    } catch (const std::exception& e) {
      record_failure(t.name, 0, std::string("uncaught exception: ") + e.what());
    }
    if (g_failures_in_test) {
      ++failed;
      std::printf("not ok - %s\n", t.name);
    } else if (g_skipped) {
      ++skipped;
      std::printf("skip - %s\n", t.name);
    } else {
      ++passed;
      std::printf("ok - %s\n", t.name);
    }
    std::fflush(stdout);
  }
  std::printf("%d passed, %d failed, %d skipped\n", passed, failed, skipped);
  return failed ? 1 : 0;
}
