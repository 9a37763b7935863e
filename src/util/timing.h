/*
 * timing.h - monotonic clock helpers for timings and benchmarks.
 */
#ifndef MS_TIMING_H
#define MS_TIMING_H

#include <stdint.h>
#include <time.h>

static inline uint64_t ms_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static inline double ms_elapsed_ms(uint64_t since_ns)
{
    return (double)(ms_now_ns() - since_ns) / 1e6;
}

#endif
