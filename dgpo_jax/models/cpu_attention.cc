// Fused causal attention for training forwards on CPU (XLA FFI custom calls, float32).
//
// Why it exists: the synthetic world's models have heads of 16 dims, and XLA:CPU spends
// most of their attention time on passes over the [queries, keys] score tensor (mask,
// softmax, casts) and on batched dots that contract over the score tensor's rows (the
// gradients of the keys and values), which it runs at a fraction of its dense speed. Here
// one (row, kv head) at a time keeps its keys and values transposed ([hd, T], so every
// loop runs over keys in 16-lane vectors) in cache, and each query's scores live in one
// short buffer: nothing of size T² is ever written to memory. Forward saves each query's
// log-sum-exp; backward recomputes the probabilities from it (as FlashAttention does).
//
// Semantics: query i attends keys j <= i whose `valid[j]` is nonzero, at scale `scale`;
// query heads h read kv head h / (H / KV). A query with no key to attend (all of its keys
// padding) outputs zeros and gets no gradient. So may a padding query (`valid[i]` zero): a
// block of kR queries that are all padding is skipped, outputs zeros and passes no gradient.
// Nothing reads a padding query's output (no query attends a padding key, and no loss sits
// on padding), so its cotangent is exactly zero and skipping it changes no gradient; a
// training batch's right padding then costs no attention (docs/benchmarks.md, "Padding
// queries skipped"). Built with cpu_decode.cc into one library by
// dgpo_jax/models/cpu_decode.py.

#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include "cpu_kernels.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using namespace dgpo_cpu;

typedef int32_t ivec __attribute__((vector_size(kLanes * sizeof(int32_t)), aligned(4)));

inline vec splat(float x) { return vec{} + x; }

// exp(x) for x <= 0 (-inf included), 16 lanes: Cephes' single-precision range reduction and
// polynomial (relative error ~1e-7); inputs below -87.3 give exactly 0.
inline vec vexp(vec x) {
  const vec lo = splat(-87.3f);
  const ivec under = x < lo;
  x = under ? lo : x;
  const vec magic = splat(12582912.f);  // 1.5 · 2^23: adding it rounds to an integer
  const vec n = (x * 1.44269504088896341f + magic) - magic;
  const vec r = x - n * 0.693359375f + n * 2.12194440e-4f;
  vec p = splat(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const vec y = p * r * r + r + 1.f;
  const ivec bits = (__builtin_convertvector(n, ivec) + 127) << 23;
  const vec two_n = reinterpret_cast<const vec&>(bits);
  return under ? splat(0.f) : y * two_n;
}

inline float vmax(vec v) {
  float m = v[0];
  for (int i = 1; i < kLanes; ++i) m = std::max(m, v[i]);
  return m;
}

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

struct Dims {
  int64_t B, T, H, KV, hd, G, Tp;  // Tp: T rounded up to whole vectors
};

ffi::Error check_dims(const ffi::Buffer<ffi::F32>& q, const ffi::Buffer<ffi::F32>& k,
                      const ffi::Buffer<ffi::F32>& v, const ffi::Buffer<ffi::S32>& valid,
                      Dims* d) {
  const auto qd = q.dimensions(), kd = k.dimensions(), vd = v.dimensions();
  const auto md = valid.dimensions();
  if (qd.size() != 4 || kd.size() != 4 || vd.size() != 4 || md.size() != 2)
    return ffi::Error::InvalidArgument(
        "dgpo causal_attention: q [B,T,H,hd], k and v [B,T,KV,hd], valid [B,T]");
  *d = {qd[0], qd[1], qd[2], kd[2], qd[3], 0, 0};
  for (int i = 0; i < 4; ++i)
    if (kd[i] != vd[i])
      return ffi::Error::InvalidArgument("dgpo causal_attention: k and v shapes differ");
  if (kd[0] != d->B || kd[1] != d->T || kd[3] != d->hd || d->KV == 0 || d->H % d->KV != 0 ||
      md[0] != d->B || md[1] != d->T)
    return ffi::Error::InvalidArgument(
        "dgpo causal_attention: k, v or valid disagree with q (or H is not a multiple of KV)");
  d->G = d->H / d->KV;
  d->Tp = (d->T + kLanes - 1) / kLanes * kLanes;
  return ffi::Error::Success();
}

// One (row, kv head)'s keys and values transposed to [hd, Tp] (zero past T), and the
// additive key mask [Tp] (0 for a valid key, -inf for padding and past T).
struct Panel {
  std::vector<float> kt, vt, mask;

  void fill(const Dims& d, const float* k, const float* v, const int32_t* valid, int64_t b,
            int64_t kv) {
    kt.assign(d.hd * d.Tp, 0.f);
    vt.assign(d.hd * d.Tp, 0.f);
    mask.assign(d.Tp, kNegInf);
    for (int64_t j = 0; j < d.T; ++j) {
      const int64_t off = ((b * d.T + j) * d.KV + kv) * d.hd;
      for (int64_t e = 0; e < d.hd; ++e) {
        kt[e * d.Tp + j] = k[off + e];
        vt[e * d.Tp + j] = v[off + e];
      }
      mask[j] = valid[b * d.T + j] ? 0.f : kNegInf;
    }
  }
};

// R consecutive queries i0..i0+R-1 of one head are handled together, so each vector of keys,
// values or their gradients read from cache serves R queries (the panels of a long row
// outgrow L1 for long rows).
constexpr int kR = 4;

// Calls block(R, h, i0) over every query of the kv head's query heads h: blocks of kR
// queries, then the row's last T mod kR one at a time; skip(n, h, i0) instead for a block of
// n queries that are all padding (`valid_row`). R is a std::integral_constant, so the block
// functions are instantiated for kR and 1 only.
template <typename F, typename S>
void for_query_blocks(const Dims& d, const int32_t* valid_row, int64_t kv, F block, S skip) {
  auto any_valid = [&](int64_t i0, int64_t n) {
    for (int64_t i = i0; i < i0 + n; ++i)
      if (valid_row[i]) return true;
    return false;
  };
  for (int64_t h = kv * d.G; h < (kv + 1) * d.G; ++h) {
    int64_t i0 = 0;
    for (; i0 + kR <= d.T; i0 += kR) {
      if (any_valid(i0, kR)) block(std::integral_constant<int, kR>{}, h, i0);
      else skip(kR, h, i0);
    }
    for (; i0 < d.T; ++i0) {
      if (any_valid(i0, 1)) block(std::integral_constant<int, 1>{}, h, i0);
      else skip(1, h, i0);
    }
  }
}

// Zeros the [hd] rows of queries i0..i0+n-1 of head h in a [B, T, H, hd] buffer.
inline void zero_queries(const Dims& d, float* x, int64_t b, int64_t h, int64_t i0, int64_t n) {
  for (int64_t i = i0; i < i0 + n; ++i) {
    float* row = x + ((b * d.T + i) * d.H + h) * d.hd;
    std::fill(row, row + d.hd, 0.f);
  }
}

// Scores of queries i0 + r (r < R) against keys [0, nb·16), nb = vectors up to the block's last
// query: s[r·Tp + j] = scale · q_r·k_j + mask_j, -inf past the query's own position. Returns nb.
template <int R>
int64_t block_scores(const Dims& d, const Panel& p, const float* const* q, float scale,
                     int64_t i0, float* s) {
  const int64_t nb = (i0 + R - 1) / kLanes + 1;
  for (int64_t jb = 0; jb < nb; ++jb) {
    vec acc[R] = {};
    const float* col = p.kt.data() + jb * kLanes;
    for (int64_t e = 0; e < d.hd; ++e) {
      const vec kv = load(col + e * d.Tp);
      for (int r = 0; r < R; ++r) acc[r] += q[r][e] * kv;
    }
    const vec m = load(p.mask.data() + jb * kLanes);
    for (int r = 0; r < R; ++r) store(s + r * d.Tp + jb * kLanes, acc[r] * scale + m);
  }
  for (int r = 0; r < R; ++r)  // causality within the last vectors
    for (int64_t j = i0 + r + 1; j < nb * kLanes; ++j) s[r * d.Tp + j] = kNegInf;
  return nb;
}

// out_r[e] = mul_r · Σ_j w_r[j] · panel[e, j], for the R rows w_r = w + r·Tp.
template <int R>
void block_rows(const Dims& d, const float* panel, const float* w, int64_t nb, const float* mul,
                float* const* out) {
  for (int64_t e = 0; e < d.hd; ++e) {
    vec acc[R] = {};
    const float* row = panel + e * d.Tp;
    for (int64_t jb = 0; jb < nb; ++jb) {
      const vec x = load(row + jb * kLanes);
      for (int r = 0; r < R; ++r) acc[r] += load(w + r * d.Tp + jb * kLanes) * x;
    }
    for (int r = 0; r < R; ++r) out[r][e] = hsum(acc[r]) * mul[r];
  }
}

template <int R>
void fwd_block(const Dims& d, const Panel& p, const float* qp, float scale, int64_t b,
               int64_t h, int64_t i0, float* s, float* op, float* lp) {
  const float* q[R];
  float* o[R];
  for (int r = 0; r < R; ++r) {
    q[r] = qp + ((b * d.T + i0 + r) * d.H + h) * d.hd;
    o[r] = op + ((b * d.T + i0 + r) * d.H + h) * d.hd;
  }
  const int64_t nb = block_scores<R>(d, p, q, scale, i0, s);
  float inv_z[R];
  for (int r = 0; r < R; ++r) {
    float* sr = s + r * d.Tp;
    vec mv = splat(kNegInf);
    for (int64_t jb = 0; jb < nb; ++jb) {
      const vec x = load(sr + jb * kLanes);
      mv = mv > x ? mv : x;
    }
    const float m = vmax(mv);
    float* lse = lp + (b * d.H + h) * d.T + i0 + r;
    if (m == kNegInf) {  // every key is padding: zero output, no gradient
      std::fill(sr, sr + nb * kLanes, 0.f);
      inv_z[r] = 0.f;
      *lse = kNegInf;
      continue;
    }
    vec z = {};
    for (int64_t jb = 0; jb < nb; ++jb) {
      const vec x = vexp(load(sr + jb * kLanes) - m);
      store(sr + jb * kLanes, x);
      z += x;
    }
    const float zs = hsum(z);
    inv_z[r] = 1.f / zs;
    *lse = m + std::log(zs);
  }
  block_rows<R>(d, p.vt.data(), s, nb, inv_z, o);
}

//   q [B, T, H, hd]; k, v [B, T, KV, hd]; valid [B, T] → o [B, T, H, hd], lse [B, H, T].
ffi::Error AttentionFwd(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k,
                        ffi::Buffer<ffi::F32> v, ffi::Buffer<ffi::S32> valid, float scale,
                        ffi::ResultBuffer<ffi::F32> o, ffi::ResultBuffer<ffi::F32> lse) {
  Dims d;
  if (auto e = check_dims(q, k, v, valid, &d); e.failure()) return e;
  parallel_for(pool, d.B * d.KV, [&](int64_t bk) {
    const int64_t b = bk / d.KV, kv = bk % d.KV;
    thread_local Panel p;
    thread_local std::vector<float> s;
    p.fill(d, k.typed_data(), v.typed_data(), valid.typed_data(), b, kv);
    s.resize(kR * d.Tp);
    for_query_blocks(
        d, valid.typed_data() + b * d.T, kv,
        [&](auto R, int64_t h, int64_t i0) {
          fwd_block<decltype(R)::value>(d, p, q.typed_data(), scale, b, h, i0, s.data(),
                                        o->typed_data(), lse->typed_data());
        },
        [&](int64_t n, int64_t h, int64_t i0) {
          zero_queries(d, o->typed_data(), b, h, i0, n);
          float* l = lse->typed_data() + (b * d.H + h) * d.T + i0;
          std::fill(l, l + n, kNegInf);
        });
  });
  return ffi::Error::Success();
}

// The backward's operands and per-(row, kv head) accumulators of the key/value gradients
// ([hd, Tp], transposed like the panels).
struct BwdArgs {
  const float *q, *o, *lse, *dout;
  float* dq;
};

template <int R>
void bwd_block(const Dims& d, const Panel& p, const BwdArgs& a, float scale, int64_t b,
               int64_t h, int64_t i0, float* s, float* ds, float* dkt, float* dvt) {
  const float *q[R], *dout[R];
  float* dq[R];
  float l[R], dot_o[R], mul[R];
  for (int r = 0; r < R; ++r) {
    const int64_t row = ((b * d.T + i0 + r) * d.H + h) * d.hd;
    q[r] = a.q + row;
    dout[r] = a.dout + row;
    dq[r] = a.dq + row;
    l[r] = a.lse[(b * d.H + h) * d.T + i0 + r];
    // a query with no key: +inf makes every probability exp(s - inf) = 0, so no gradient
    if (l[r] == kNegInf) l[r] = -kNegInf;
    dot_o[r] = 0.f;  // Σ_e do_e · o_e
    for (int64_t e = 0; e < d.hd; ++e) dot_o[r] += dout[r][e] * a.o[row + e];
    mul[r] = scale;
  }
  const int64_t nb = block_scores<R>(d, p, q, scale, i0, s);
  for (int64_t jb = 0; jb < nb; ++jb) {
    vec dp[R] = {};
    const float* col = p.vt.data() + jb * kLanes;
    for (int64_t e = 0; e < d.hd; ++e) {
      const vec x = load(col + e * d.Tp);
      for (int r = 0; r < R; ++r) dp[r] += dout[r][e] * x;
    }
    for (int r = 0; r < R; ++r) {
      float* sr = s + r * d.Tp + jb * kLanes;
      const vec pr = vexp(load(sr) - l[r]);
      store(sr, pr);
      store(ds + r * d.Tp + jb * kLanes, pr * (dp[r] - dot_o[r]));
    }
  }
  block_rows<R>(d, p.kt.data(), ds, nb, mul, dq);
  for (int64_t e = 0; e < d.hd; ++e) {
    float qe[R], de[R];
    for (int r = 0; r < R; ++r) {
      qe[r] = q[r][e] * scale;
      de[r] = dout[r][e];
    }
    float* krow = dkt + e * d.Tp;
    float* vrow = dvt + e * d.Tp;
    for (int64_t jb = 0; jb < nb; ++jb) {
      vec gk = load(krow + jb * kLanes), gv = load(vrow + jb * kLanes);
      for (int r = 0; r < R; ++r) {
        gk += qe[r] * load(ds + r * d.Tp + jb * kLanes);
        gv += de[r] * load(s + r * d.Tp + jb * kLanes);
      }
      store(krow + jb * kLanes, gk);
      store(vrow + jb * kLanes, gv);
    }
  }
}

//   the forward's operands, o, lse and do [B, T, H, hd] → dq [B, T, H, hd], dk, dv [B, T, KV, hd].
ffi::Error AttentionBwd(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k,
                        ffi::Buffer<ffi::F32> v, ffi::Buffer<ffi::S32> valid,
                        ffi::Buffer<ffi::F32> o, ffi::Buffer<ffi::F32> lse,
                        ffi::Buffer<ffi::F32> dout, float scale, ffi::ResultBuffer<ffi::F32> dq,
                        ffi::ResultBuffer<ffi::F32> dk, ffi::ResultBuffer<ffi::F32> dv) {
  Dims d;
  if (auto e = check_dims(q, k, v, valid, &d); e.failure()) return e;
  const BwdArgs a{q.typed_data(), o.typed_data(), lse.typed_data(), dout.typed_data(),
                  dq->typed_data()};
  float *dkp = dk->typed_data(), *dvp = dv->typed_data();
  parallel_for(pool, d.B * d.KV, [&](int64_t bk) {
    const int64_t b = bk / d.KV, kv = bk % d.KV;
    thread_local Panel p;
    thread_local std::vector<float> s, ds, dkt, dvt;
    p.fill(d, k.typed_data(), v.typed_data(), valid.typed_data(), b, kv);
    s.resize(kR * d.Tp);
    ds.resize(kR * d.Tp);
    dkt.assign(d.hd * d.Tp, 0.f);
    dvt.assign(d.hd * d.Tp, 0.f);
    for_query_blocks(
        d, valid.typed_data() + b * d.T, kv,
        [&](auto R, int64_t h, int64_t i0) {
          bwd_block<decltype(R)::value>(d, p, a, scale, b, h, i0, s.data(), ds.data(),
                                        dkt.data(), dvt.data());
        },
        [&](int64_t n, int64_t h, int64_t i0) { zero_queries(d, a.dq, b, h, i0, n); });
    for (int64_t j = 0; j < d.T; ++j) {
      const int64_t off = ((b * d.T + j) * d.KV + kv) * d.hd;
      for (int64_t e = 0; e < d.hd; ++e) {
        dkp[off + e] = dkt[e * d.Tp + j];
        dvp[off + e] = dvt[e * d.Tp + j];
      }
    }
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(DgpoCausalAttentionFwd, AttentionFwd,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Attr<float>("scale")
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(DgpoCausalAttentionBwd, AttentionBwd,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Attr<float>("scale")
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
