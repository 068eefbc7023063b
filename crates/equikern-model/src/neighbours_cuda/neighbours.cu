// equikern: the periodic radius graph (cell lists) on a CUDA device, edge for edge the list of
// `Graph::build` (crates/equikern-model/src/graph.rs): same edges, same order (the lead
// edges sorted by (centre, neighbour, shift), then each reversed), same shifts, and edge
// vectors with the same f64 operations in the same order. Every floating-point operation is an explicit round-to-nearest intrinsic
// (no FMA contraction whatever the compiler flags), so the device computes what the host does.
//
// Parameters (filled by the host from the same `Geometry`/`BinLayout` as `Graph::build`):
//   P (double): [0,9) reciprocal rows, [9,12) bin origin, [12,15) bin width (fractional),
//               [15,24) cell rows, [24] cutoff².
//   Q (long long): [0,3) host bins per direction, [3,6) device bins (host bins merged in
//               contiguous runs when the grid is too large: b' = b·n'/n), [6,9) device bins
//               visited either side, [9,12) periodic (0/1).
// Launch order (one stream): bounds (open directions only) -> bin -> scan(bin counts) -> fill
// -> sort_bins -> count -> scan(edge counts) -> write -> order. Every kernel is a grid-stride
// loop except `ek_nl_scan` (one block of EK_NL_SCAN_THREADS threads).

#define EK_NL_SCAN_THREADS 1024

static __device__ __forceinline__ double ek_nl_frac(const double* __restrict__ pos,
                                                    const double* __restrict__ P,
                                                    unsigned a, int k) {
  const double* r = P + 3 * k;
  double x = pos[3ull * a], y = pos[3ull * a + 1], z = pos[3ull * a + 2];
  return __dadd_rn(__dadd_rn(__dmul_rn(x, r[0]), __dmul_rn(y, r[1])), __dmul_rn(z, r[2]));
}

// pos_j - pos_i + s0·c0 + s1·c1 + s2·c2 (left to right, as Structure::edge_vector).
static __device__ __forceinline__ void ek_nl_vec(const double* __restrict__ pos,
                                                 const double* __restrict__ P, unsigned i,
                                                 unsigned j, const long long* sh, double* v) {
  double s0 = (double)sh[0], s1 = (double)sh[1], s2 = (double)sh[2];
  for (int d = 0; d < 3; ++d) {
    double t = __dsub_rn(pos[3ull * j + d], pos[3ull * i + d]);
    t = __dadd_rn(t, __dmul_rn(s0, P[15 + d]));
    t = __dadd_rn(t, __dmul_rn(s1, P[18 + d]));
    t = __dadd_rn(t, __dmul_rn(s2, P[21 + d]));
    v[d] = t;
  }
}

// Order-preserving map of a double onto unsigned 64-bit keys (for atomic min/max).
static __device__ __forceinline__ unsigned long long ek_nl_key(double x) {
  unsigned long long u = (unsigned long long)__double_as_longlong(x);
  return (u >> 63) ? ~u : (u | 0x8000000000000000ull);
}

// mm[0..3): min keys, mm[3..6): max keys of the fractional coordinates of open directions.
extern "C" __global__ void ek_nl_bounds(const double* __restrict__ pos,
                                        const double* __restrict__ P,
                                        const long long* __restrict__ Q, unsigned n,
                                        unsigned long long* mm) {
  for (unsigned long long t = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; t < n;
       t += (unsigned long long)gridDim.x * blockDim.x) {
    for (int k = 0; k < 3; ++k) {
      if (Q[9 + k]) continue;
      unsigned long long key = ek_nl_key(ek_nl_frac(pos, P, (unsigned)t, k));
      atomicMin(&mm[k], key);
      atomicMax(&mm[3 + k], key);
    }
  }
}

// Per atom: wrap into the cell along periodic directions, the integer wrap, the device bin;
// counts atoms per bin (bcount zeroed by the host).
extern "C" __global__ void ek_nl_bin(const double* __restrict__ pos, const double* __restrict__ P,
                                     const long long* __restrict__ Q, unsigned n,
                                     long long* wrap, unsigned* bin, unsigned* bcount) {
  for (unsigned long long t = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; t < n;
       t += (unsigned long long)gridDim.x * blockDim.x) {
    unsigned a = (unsigned)t;
    long long cb[3];
    for (int k = 0; k < 3; ++k) {
      double f = ek_nl_frac(pos, P, a, k);
      long long w = 0;
      if (Q[9 + k]) {
        double wf = -floor(f);
        f = __dadd_rn(f, wf);
        if (f >= 1.0) {
          f = __dsub_rn(f, 1.0);
          w = (long long)wf - 1;
        } else {
          w = (long long)wf;
        }
      }
      wrap[3ull * a + k] = w;
      long long nb = Q[k];
      double fb = floor(__ddiv_rn(__dsub_rn(f, P[9 + k]), P[12 + k]));
      long long b = !(fb > 0.0) ? 0 : (fb >= (double)(nb - 1) ? nb - 1 : (long long)fb);
      cb[k] = b * Q[3 + k] / nb;
    }
    unsigned id = (unsigned)((cb[0] * Q[4] + cb[1]) * Q[5] + cb[2]);
    bin[a] = id;
    atomicAdd(&bcount[id], 1u);
  }
}

// Exclusive scan of n counts: out[0..n] (out[n] = total, low 32 bits), *total = the 64-bit
// sum. One block; thread t owns the contiguous run [t·c, (t+1)·c).
extern "C" __global__ void ek_nl_scan(const unsigned* __restrict__ in, unsigned* out, unsigned n,
                                      unsigned long long* total) {
  __shared__ unsigned long long part[EK_NL_SCAN_THREADS];
  unsigned t = threadIdx.x, nt = blockDim.x;
  unsigned long long c = ((unsigned long long)n + nt - 1) / nt;
  unsigned long long lo = c * t, hi = lo + c;
  if (lo > n) lo = n;
  if (hi > n) hi = n;
  unsigned long long s = 0;
  for (unsigned long long i = lo; i < hi; ++i) s += in[i];
  part[t] = s;
  __syncthreads();
  // inclusive Hillis-Steele scan of the block's partial sums
  for (unsigned off = 1; off < nt; off <<= 1) {
    unsigned long long add = t >= off ? part[t - off] : 0ull;
    __syncthreads();
    part[t] += add;
    __syncthreads();
  }
  unsigned long long run = part[t] - s;
  for (unsigned long long i = lo; i < hi; ++i) {
    unsigned v = in[i];
    out[i] = (unsigned)run;
    run += v;
  }
  if (t == nt - 1) {
    out[n] = (unsigned)part[t];
    *total = part[t];
  }
}

// Scatter atoms into their bins (cursor zeroed by the host); the order within a bin is fixed
// by ek_nl_sort_bins.
extern "C" __global__ void ek_nl_fill(const unsigned* __restrict__ bin,
                                      const unsigned* __restrict__ bstart, unsigned n,
                                      unsigned* cursor, unsigned* members) {
  for (unsigned long long t = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; t < n;
       t += (unsigned long long)gridDim.x * blockDim.x) {
    unsigned b = bin[t];
    unsigned slot = atomicAdd(&cursor[b], 1u);
    members[bstart[b] + slot] = (unsigned)t;
  }
}

// Each bin's atoms in ascending index order (insertion sort; bins hold a few atoms).
extern "C" __global__ void ek_nl_sort_bins(const unsigned* __restrict__ bstart, unsigned nbins,
                                           unsigned* members) {
  for (unsigned long long t = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
       t < nbins; t += (unsigned long long)gridDim.x * blockDim.x) {
    unsigned lo = bstart[t], hi = bstart[t + 1];
    for (unsigned a = lo + 1; a < hi; ++a) {
      unsigned v = members[a], b = a;
      while (b > lo && members[b - 1] > v) {
        members[b] = members[b - 1];
        --b;
      }
      members[b] = v;
    }
  }
}

static __device__ __forceinline__ long long ek_nl_floordiv(long long a, long long b) {
  long long q = a / b;
  return (a % b != 0 && a < 0) ? q - 1 : q;
}

// Visits the bins within reach of atom i; counts its lead edges (j > i, or j = i with a
// shift lexicographically above zero: Graph::build's pair order), and writes them from `base`
// when `sdst` is not null (in visiting order: ek_nl_order sorts them and adds the reverses).
static __device__ unsigned ek_nl_visit(const double* __restrict__ pos,
                                       const double* __restrict__ P,
                                       const long long* __restrict__ Q, unsigned i,
                                       const long long* __restrict__ wrap,
                                       const unsigned* __restrict__ bin,
                                       const unsigned* __restrict__ bstart,
                                       const unsigned* __restrict__ members, unsigned base,
                                       unsigned* ssrc, unsigned* sdst, long long* sshift) {
  const long long c0 = Q[3], c1 = Q[4], c2 = Q[5];
  const unsigned b = bin[i];
  const long long bi[3] = {(long long)(b / (unsigned long long)(c1 * c2)),
                           (long long)((b / (unsigned long long)c2) % (unsigned long long)c1),
                           (long long)(b % (unsigned long long)c2)};
  const long long cn[3] = {c0, c1, c2};
  const double cut2 = P[24];
  const long long wi[3] = {wrap[3ull * i], wrap[3ull * i + 1], wrap[3ull * i + 2]};
  unsigned cnt = 0;
  long long key[3], img[3];
  for (long long d0 = -Q[6]; d0 <= Q[6]; ++d0) {
    long long e0 = bi[0] + d0;
    if (Q[9]) {
      img[0] = ek_nl_floordiv(e0, cn[0]);
      key[0] = e0 - img[0] * cn[0];
    } else {
      if (e0 < 0 || e0 >= cn[0]) continue;
      key[0] = e0;
      img[0] = 0;
    }
    for (long long d1 = -Q[7]; d1 <= Q[7]; ++d1) {
      long long e1 = bi[1] + d1;
      if (Q[10]) {
        img[1] = ek_nl_floordiv(e1, cn[1]);
        key[1] = e1 - img[1] * cn[1];
      } else {
        if (e1 < 0 || e1 >= cn[1]) continue;
        key[1] = e1;
        img[1] = 0;
      }
      for (long long d2 = -Q[8]; d2 <= Q[8]; ++d2) {
        long long e2 = bi[2] + d2;
        if (Q[11]) {
          img[2] = ek_nl_floordiv(e2, cn[2]);
          key[2] = e2 - img[2] * cn[2];
        } else {
          if (e2 < 0 || e2 >= cn[2]) continue;
          key[2] = e2;
          img[2] = 0;
        }
        unsigned kb = (unsigned)((key[0] * c1 + key[1]) * c2 + key[2]);
        for (unsigned m = bstart[kb], me = bstart[kb + 1]; m < me; ++m) {
          unsigned j = members[m];
          long long sh[3];
          for (int k = 0; k < 3; ++k) sh[k] = img[k] + wrap[3ull * j + k] - wi[k];
          const bool lead =
              j > i || (j == i && (sh[0] > 0 || (sh[0] == 0 && (sh[1] > 0 || (sh[1] == 0 && sh[2] > 0)))));
          if (!lead) continue;
          double v[3];
          ek_nl_vec(pos, P, i, j, sh, v);
          double r2 = __dadd_rn(__dadd_rn(__dmul_rn(v[0], v[0]), __dmul_rn(v[1], v[1])),
                                __dmul_rn(v[2], v[2]));
          if (r2 < cut2) {
            if (sdst) {
              unsigned long long o = (unsigned long long)base + cnt;
              ssrc[o] = i;
              sdst[o] = j;
              sshift[3 * o] = sh[0];
              sshift[3 * o + 1] = sh[1];
              sshift[3 * o + 2] = sh[2];
            }
            ++cnt;
          }
        }
      }
    }
  }
  return cnt;
}

extern "C" __global__ void ek_nl_count(const double* __restrict__ pos,
                                       const double* __restrict__ P,
                                       const long long* __restrict__ Q, unsigned n,
                                       const long long* __restrict__ wrap,
                                       const unsigned* __restrict__ bin,
                                       const unsigned* __restrict__ bstart,
                                       const unsigned* __restrict__ members, unsigned* counts) {
  for (unsigned long long t = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; t < n;
       t += (unsigned long long)gridDim.x * blockDim.x) {
    counts[t] = ek_nl_visit(pos, P, Q, (unsigned)t, wrap, bin, bstart, members, 0u,
                            (unsigned*)0, (unsigned*)0, (long long*)0);
  }
}

extern "C" __global__ void ek_nl_write(const double* __restrict__ pos,
                                       const double* __restrict__ P,
                                       const long long* __restrict__ Q, unsigned n,
                                       const long long* __restrict__ wrap,
                                       const unsigned* __restrict__ bin,
                                       const unsigned* __restrict__ bstart,
                                       const unsigned* __restrict__ members,
                                       const unsigned* __restrict__ offsets, unsigned* ssrc,
                                       unsigned* sdst, long long* sshift) {
  for (unsigned long long t = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; t < n;
       t += (unsigned long long)gridDim.x * blockDim.x) {
    ek_nl_visit(pos, P, Q, (unsigned)t, wrap, bin, bstart, members, offsets[t], ssrc, sdst,
                sshift);
  }
}

// Per staged (lead) edge: its rank among its centre's leads by (neighbour, shift) gives its
// place p; the edge vector is computed there, and lead p reversed (j → i, −shift, −vector:
// exactly what the visit from j would compute) goes to `leads + p`.
extern "C" __global__ void ek_nl_order(const double* __restrict__ pos,
                                       const double* __restrict__ P, unsigned leads,
                                       const unsigned* __restrict__ offsets,
                                       const unsigned* __restrict__ ssrc,
                                       const unsigned* __restrict__ sdst,
                                       const long long* __restrict__ sshift, unsigned* src,
                                       unsigned* dst, long long* shift, double* vec) {
  for (unsigned long long t = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
       t < leads; t += (unsigned long long)gridDim.x * blockDim.x) {
    unsigned i = ssrc[t], j = sdst[t];
    const long long sh[3] = {sshift[3 * t], sshift[3 * t + 1], sshift[3 * t + 2]};
    unsigned lo = offsets[i], hi = offsets[i + 1], rank = 0;
    for (unsigned f = lo; f < hi; ++f) {
      unsigned jf = sdst[f];
      bool less = jf < j;
      if (jf == j) {
        long long a0 = sshift[3ull * f], a1 = sshift[3ull * f + 1], a2 = sshift[3ull * f + 2];
        less = a0 < sh[0] || (a0 == sh[0] && (a1 < sh[1] || (a1 == sh[1] && a2 < sh[2])));
      }
      rank += less ? 1u : 0u;
    }
    unsigned long long p = (unsigned long long)lo + rank;
    src[p] = i;
    dst[p] = j;
    shift[3 * p] = sh[0];
    shift[3 * p + 1] = sh[1];
    shift[3 * p + 2] = sh[2];
    double v[3];
    ek_nl_vec(pos, P, i, j, sh, v);
    vec[3 * p] = v[0];
    vec[3 * p + 1] = v[1];
    vec[3 * p + 2] = v[2];
    const unsigned long long r = p + leads;
    src[r] = j;
    dst[r] = i;
    shift[3 * r] = -sh[0];
    shift[3 * r + 1] = -sh[1];
    shift[3 * r + 2] = -sh[2];
    vec[3 * r] = -v[0];
    vec[3 * r + 1] = -v[1];
    vec[3 * r + 2] = -v[2];
  }
}
