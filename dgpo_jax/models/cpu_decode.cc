// CPU kernels for one decode step at small batch (XLA FFI custom calls, float32).
//
// Why they exist: at batch 8 a decode step must stream every weight once, but XLA:CPU's
// GEMM for 8-row operands runs far below memory speed, and under the layer scan XLA copies
// each layer's weight slice (and cache slice) before using it. These kernels read stacked
// [L, ...] operands in place (the layer index is an operand): weights pre-packed into
// column panels, each streamed once front to back with up to 8 batch rows' outputs held in
// registers; attention reads only each row's filled cache slots. Work is split over XLA's
// intra-op thread pool.
//
// Built by dgpo_jax/models/cpu_decode.py with the host compiler (-O3 -march=native). GCC
// vector extensions (no intrinsics) keep the source portable across x86 ISAs and Arm.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "cpu_kernels.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using namespace dgpo_cpu;

// Panel width of packed weights: a [K, N] matrix is stored as [ceil(N / kP), K, kP] (zero
// columns pad the last panel), so one panel is one contiguous stream read once, front to
// back, with its kP outputs of up to 8 rows kept in registers for the whole K.
constexpr int kPV = 3;
constexpr int kP = kPV * kLanes;

template <int MR>
void panel_rows(const float* x, int64_t K, const float* panel, float* acc_out) {
  vec acc[MR][kPV];
  for (int m = 0; m < MR; ++m)
    for (int j = 0; j < kPV; ++j) acc[m][j] = vec{};
  for (int64_t k = 0; k < K; ++k) {
    const float* wr = panel + k * kP;
    vec wv[kPV];
    for (int j = 0; j < kPV; ++j) wv[j] = load(wr + j * kLanes);
    for (int m = 0; m < MR; ++m) {
      const float xv = x[m * K + k];
      for (int j = 0; j < kPV; ++j) acc[m][j] += xv * wv[j];
    }
  }
  for (int m = 0; m < MR; ++m)
    for (int j = 0; j < kPV; ++j) store(acc_out + (m * kPV + j) * kLanes, acc[m][j]);
}

void panel_block(int64_t mr, const float* x, int64_t K, const float* panel, float* acc_out) {
  switch (mr) {
    case 1: return panel_rows<1>(x, K, panel, acc_out);
    case 2: return panel_rows<2>(x, K, panel, acc_out);
    case 3: return panel_rows<3>(x, K, panel, acc_out);
    case 4: return panel_rows<4>(x, K, panel, acc_out);
    case 5: return panel_rows<5>(x, K, panel, acc_out);
    case 6: return panel_rows<6>(x, K, panel, acc_out);
    case 7: return panel_rows<7>(x, K, panel, acc_out);
    default: return panel_rows<8>(x, K, panel, acc_out);
  }
}

// The weight operand is [L, ...] or unstacked; `layer` picks the slice (0 when unstacked).
ffi::Error layer_offset(const ffi::AnyBuffer::Dimensions& wd, int64_t rank_unstacked,
                        int32_t layer, int64_t slice, int64_t* off) {
  int64_t L = 1;
  if (static_cast<int64_t>(wd.size()) == rank_unstacked + 1) {
    L = wd[0];
  } else if (static_cast<int64_t>(wd.size()) != rank_unstacked) {
    return ffi::Error::InvalidArgument("dgpo cpu_decode: weight has the wrong rank");
  }
  if (layer < 0 || layer >= L)
    return ffi::Error::InvalidArgument("dgpo cpu_decode: layer index out of range");
  *off = static_cast<int64_t>(layer) * slice;
  return ffi::Error::Success();
}

// y [M, N] = x [M, K] @ W[layer] with W packed as [(L,) NP, K, kP] (see kP); N <= NP * kP.
ffi::Error MatmulPacked(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                        ffi::Buffer<ffi::S32> layer, ffi::ResultBuffer<ffi::F32> y) {
  const auto xd = x.dimensions();
  const auto wd = w.dimensions();
  const auto yd = y->dimensions();
  if (xd.size() != 2 || wd.size() < 3 || wd[wd.size() - 1] != kP)
    return ffi::Error::InvalidArgument("dgpo matmul_packed: x [M, K], w [(L,) NP, K, 48]");
  const int64_t M = xd[0], K = xd[1], NP = wd[wd.size() - 3], N = yd[1];
  if (wd[wd.size() - 2] != K || N > NP * kP)
    return ffi::Error::InvalidArgument("dgpo matmul_packed: w's K or panel count disagrees");
  int64_t off = 0;
  if (auto e = layer_offset(wd, 3, layer.typed_data()[0], NP * K * kP, &off); e.failure())
    return e;
  const float* wp = w.typed_data() + off;
  const float* xp = x.typed_data();
  float* yp = y->typed_data();
  const int64_t used = (N + kP - 1) / kP;  // panels holding the N columns asked for
  const int64_t per = std::max<int64_t>(1, used / (4 * std::max<int64_t>(1, pool.num_threads())));
  const int64_t chunks = (used + per - 1) / per;
  parallel_for(pool, chunks, [&](int64_t c) {
    float acc[8 * kP];
    for (int64_t p = c * per; p < std::min(used, (c + 1) * per); ++p) {
      const int64_t n0 = p * kP, width = std::min<int64_t>(kP, N - n0);
      for (int64_t m0 = 0; m0 < M; m0 += 8) {
        const int64_t mr = std::min<int64_t>(8, M - m0);
        panel_block(mr, xp + m0 * K, K, wp + p * K * kP, acc);
        for (int64_t m = 0; m < mr; ++m)
          std::memcpy(yp + (m0 + m) * N + n0, acc + m * kP, width * sizeof(float));
      }
    }
  });
  return ffi::Error::Success();
}

// One query token per row against its cached prefix and its own key/value.
//   q [B, H, hd]; k_new, v_new [B, KV, hd]; cache_k, cache_v [L, B, KV, S, hd];
//   lengths [B]: cached slots attended per row (slots [0, len)). out [B, H, hd].
// Query head h reads kv head h / (H / KV), as in grouped-query attention.
ffi::Error DecodeAttention(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q,
                           ffi::Buffer<ffi::F32> k_new, ffi::Buffer<ffi::F32> v_new,
                           ffi::Buffer<ffi::F32> cache_k, ffi::Buffer<ffi::F32> cache_v,
                           ffi::Buffer<ffi::S32> layer, ffi::Buffer<ffi::S32> lengths,
                           float scale, ffi::ResultBuffer<ffi::F32> out) {
  const auto qd = q.dimensions();
  const auto cd = cache_k.dimensions();
  if (qd.size() != 3 || cd.size() != 5)
    return ffi::Error::InvalidArgument("dgpo decode_attention: q [B,H,hd], cache [L,B,KV,S,hd]");
  const int64_t B = qd[0], H = qd[1], hd = qd[2];
  const int64_t L = cd[0], KV = cd[2], S = cd[3];
  const auto same = [](auto a, auto b) {
    return std::equal(a.begin(), a.end(), b.begin(), b.end());
  };
  const auto kd = k_new.dimensions();
  if (cd[1] != B || cd[4] != hd || H % KV != 0 || !same(cache_v.dimensions(), cd) ||
      kd.size() != 3 || kd[0] != B || kd[1] != KV || kd[2] != hd ||
      !same(v_new.dimensions(), kd) || lengths.element_count() != static_cast<size_t>(B))
    return ffi::Error::InvalidArgument(
        "dgpo decode_attention: expected k_new, v_new [B, KV, hd] and lengths [B] matching "
        "q [B, H, hd] and caches [L, B, KV, S, hd]");
  const int32_t l = layer.typed_data()[0];
  if (l < 0 || l >= L)
    return ffi::Error::InvalidArgument("dgpo decode_attention: layer index out of range");
  const int64_t G = H / KV;
  const float* qp = q.typed_data();
  const float* knp = k_new.typed_data();
  const float* vnp = v_new.typed_data();
  const int32_t* lens = lengths.typed_data();
  float* op = out->typed_data();
  parallel_for(pool, B * KV, [&](int64_t bk) {
    const int64_t b = bk / KV, kv = bk % KV;
    const int64_t n = std::clamp<int64_t>(lens[b], 0, S);
    const int64_t base = (((l * B + b) * KV + kv) * S) * hd;
    const float* ks = cache_k.typed_data() + base;
    const float* vs = cache_v.typed_data() + base;
    const float* kself = knp + (b * KV + kv) * hd;
    const float* vself = vnp + (b * KV + kv) * hd;
    thread_local std::vector<float> scores;
    scores.resize(static_cast<size_t>(G * (n + 1)));
    for (int64_t g = 0; g < G; ++g) {
      const float* qv = qp + (b * H + kv * G + g) * hd;
      float* sc = scores.data() + g * (n + 1);
      for (int64_t s = 0; s <= n; ++s) {
        const float* kr = s < n ? ks + s * hd : kself;
        int64_t d = 0;
        vec acc = {};
        for (; d + kLanes <= hd; d += kLanes) acc += load(qv + d) * load(kr + d);
        float dot = hsum(acc);
        for (; d < hd; ++d) dot += qv[d] * kr[d];
        sc[s] = dot * scale;
      }
      const float mx = *std::max_element(sc, sc + n + 1);
      float z = 0.f;
      for (int64_t s = 0; s <= n; ++s) z += (sc[s] = std::exp(sc[s] - mx));
      const float inv = 1.f / z;
      for (int64_t s = 0; s <= n; ++s) sc[s] *= inv;
    }
    for (int64_t g = 0; g < G; ++g) {
      const float* sc = scores.data() + g * (n + 1);
      float* o = op + (b * H + kv * G + g) * hd;
      int64_t d = 0;
      for (; d + kLanes <= hd; d += kLanes) {
        vec acc = {};
        for (int64_t s = 0; s <= n; ++s) acc += sc[s] * load((s < n ? vs + s * hd : vself) + d);
        store(o + d, acc);
      }
      for (; d < hd; ++d) {
        float acc = 0.f;
        for (int64_t s = 0; s <= n; ++s) acc += sc[s] * (s < n ? vs[s * hd + d] : vself[d]);
        o[d] = acc;
      }
    }
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(DgpoDecodeAttention, DecodeAttention,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Attr<float>("scale")
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(DgpoMatmulPacked, MatmulPacked,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
