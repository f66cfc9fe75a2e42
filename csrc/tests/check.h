// check.h: a minimal test harness for the C++ unit tests (no test framework needed).
//   TEST(name) { EXPECT(cond); EXPECT_THROWS(expr, "part of the message"); }
//   int main() { return run_all(); }
#pragma once

#include <c10/util/Exception.h>

#include <cstdio>
#include <functional>
#include <string>
#include <vector>

namespace check {

struct Case {
  const char* name;
  std::function<void()> fn;
};

inline std::vector<Case>& registry() {
  static std::vector<Case> cases;
  return cases;
}

inline int& failures() {
  static int n = 0;
  return n;
}

struct Register {
  Register(const char* name, std::function<void()> fn) { registry().push_back({name, std::move(fn)}); }
};

inline int run_all() {
  int failed_cases = 0;
  for (const auto& c : registry()) {
    const int before = failures();
    try {
      c.fn();
    } catch (const std::exception& e) {
      std::printf("  unexpected exception: %s\n", e.what());
      ++failures();
    }
    const bool ok = failures() == before;
    failed_cases += ok ? 0 : 1;
    std::printf("[%s] %s\n", ok ? "  OK  " : "FAILED", c.name);
  }
  std::printf("%zu cases, %d failed\n", registry().size(), failed_cases);
  return failed_cases == 0 ? 0 : 1;
}

}  // namespace check

#define TEST(name)                                              \
  static void name();                                           \
  static check::Register register_##name(#name, name);          \
  static void name()

#define EXPECT(cond)                                                          \
  do {                                                                       \
    if (!(cond)) {                                                           \
      std::printf("  %s:%d: EXPECT(%s) failed\n", __FILE__, __LINE__, #cond); \
      ++check::failures();                                                   \
    }                                                                        \
  } while (0)

#define EXPECT_THROWS(expr, fragment)                                                       \
  do {                                                                                      \
    bool thrown = false;                                                                    \
    try {                                                                                   \
      (void)(expr);                                                                         \
    } catch (const c10::Error& e) {                                                         \
      thrown = true;                                                                        \
      if (std::string(e.what()).find(fragment) == std::string::npos) {                      \
        std::printf("  %s:%d: message lacks '%s': %s\n", __FILE__, __LINE__, fragment,      \
                    e.what());                                                              \
        ++check::failures();                                                                \
      }                                                                                     \
    }                                                                                       \
    if (!thrown) {                                                                          \
      std::printf("  %s:%d: %s did not throw\n", __FILE__, __LINE__, #expr);                \
      ++check::failures();                                                                  \
    }                                                                                       \
  } while (0)
