// A minimal check macro for the C++ tests run by ctest (no test framework needed).
#pragma once

#include <cstdio>
#include <cstdlib>

inline int& checkFailures()
{
    static int failures = 0;
    return failures;
}

#define CHECK(cond)                                                                                                    \
    do                                                                                                                 \
    {                                                                                                                  \
        if (!(cond))                                                                                                   \
        {                                                                                                              \
            std::fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);                              \
            ++checkFailures();                                                                                         \
        }                                                                                                              \
    } while (0)

inline int checkResult(char const* name)
{
    if (checkFailures() != 0)
    {
        std::fprintf(stderr, "%s: %d check(s) failed\n", name, checkFailures());
        return 1;
    }
    std::printf("%s: all checks passed\n", name);
    return 0;
}
