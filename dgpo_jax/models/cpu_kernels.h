// Helpers shared by the CPU kernels (cpu_decode.cc, cpu_attention.cc): 16-lane float vectors
// through GCC vector extensions, and a parallel loop over XLA's intra-op thread pool.
// Everything here is inline or a template, so both sources link into one library.

#ifndef DGPO_JAX_MODELS_CPU_KERNELS_H_
#define DGPO_JAX_MODELS_CPU_KERNELS_H_

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <thread>

#include "xla/ffi/api/ffi.h"

namespace dgpo_cpu {

namespace ffi = xla::ffi;

constexpr int kLanes = 16;
typedef float vec __attribute__((vector_size(kLanes * sizeof(float)), aligned(4)));

inline vec load(const float* p) { return *reinterpret_cast<const vec*>(p); }
inline void store(float* p, vec v) { *reinterpret_cast<vec*>(p) = v; }
inline float hsum(vec v) {
  float s = 0.f;
  for (int i = 0; i < kLanes; ++i) s += v[i];
  return s;
}

// Runs fn(i) for i in [0, n) on the caller and up to (pool threads - 1) helpers. Chunks are
// claimed from an atomic counter, so a helper that starts late (its pool thread busy with
// other XLA work) finds nothing left and returns: the caller never waits for queued tasks,
// only for helpers already inside a chunk. No deadlock when every pool thread is a caller.
template <typename F>
void parallel_for(ffi::ThreadPool& pool, int64_t n, F fn) {
  int64_t helpers = std::min<int64_t>(pool.num_threads(), n) - 1;
  if (helpers <= 0) {
    for (int64_t i = 0; i < n; ++i) fn(i);
    return;
  }
  struct State {
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> active{0};
  };
  auto st = std::make_shared<State>();
  auto fnp = std::make_shared<F>(fn);
  for (int64_t h = 0; h < helpers; ++h) {
    pool.Schedule([st, fnp, n]() {
      st->active.fetch_add(1);
      for (int64_t i; (i = st->next.fetch_add(1)) < n;) (*fnp)(i);
      st->active.fetch_sub(1);
    });
  }
  for (int64_t i; (i = st->next.fetch_add(1)) < n;) fn(i);
  while (st->active.load() > 0) std::this_thread::yield();
}

}  // namespace dgpo_cpu

#endif  // DGPO_JAX_MODELS_CPU_KERNELS_H_
