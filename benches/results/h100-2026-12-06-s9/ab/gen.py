# Harness generator (session 9): kb.cu / kf.cu are the SevenNet-0 conv backward / forward as emitted at
# e24dbf0 (lower_conv(sevennet-0-conv, F32, Capabilities::cuda_sm90(), ConvOptions::default()) + emit_cuda);
# writes variants.cu (kernels + main.cu); on the GPU machine: nvcc -O3 -arch=sm_90 -o h variants.cu && ./h
import re
b=open('kb.cu').read(); f=open('kf.cu').read()
def body(s): return s[s.index('extern "C"'):]
hdr=b[b.index('template'):b.index('extern "C"')]
bb=body(b); fb=body(f)
out=['#include <cstdio>\n#include <vector>\n#include <algorithm>\n#include <cmath>\n#include <cuda_runtime.h>\n',hdr]
def ren(s,old,new): 
    assert old in s; return s.replace(old,new)
# backward variants
out.append(ren(bb,'conv_backward_fused','b0'))
loop='''    for (unsigned int t = 0u; lo + t < hi; ++t) {
        const unsigned int e = send_csr[ids + lo + t];
        const unsigned int rcv = send_csr[oth + lo + t];
'''
pf='''    unsigned int e_n = 0u, rcv_n = 0u;
    if (lo < hi) { e_n = send_csr[ids + lo]; rcv_n = send_csr[oth + lo]; }
    for (unsigned int t = 0u; lo + t < hi; ++t) {
        const unsigned int e = e_n;
        const unsigned int rcv = rcv_n;
        if (lo + t + 1u < hi) { e_n = send_csr[ids + lo + t + 1u]; rcv_n = send_csr[oth + lo + t + 1u]; }
'''
assert loop in bb
out.append(ren(bb.replace(loop,pf),'conv_backward_fused','b1'))
out.append(ren(bb.replace(loop,'#pragma unroll 2\n'+loop),'conv_backward_fused','b2'))
# recursive-halving gy reduction instead of 9 butterflies
a=bb.index('        gy0 += ek_xor32(gy0, 16);'); z=bb.index('        if (l == 0u) {\n            gy[')
zz=bb.index('        }\n',z)+len('        }\n')
red='''        {
            float v[16] = {gy0, gy1, gy2, gy3, gy4, gy5, gy6, gy7, gy8, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
            // halving: after step with offset o, lane keeps half of its values
            #pragma unroll
            for (int s = 0; s < 4; ++s) {
                const int o = 16 >> s; const int n = 8 >> s; const bool up = (l & o) != 0u;
                #pragma unroll
                for (int j = 0; j < n; ++j) {
                    float send = up ? v[j] : v[j + n];
                    float keep = up ? v[j + n] : v[j];
                    v[j] = keep + ek_xor32(send, o);
                }
            }
            v[0] += ek_xor32(v[0], 1);
            // lane with bits (16,8,4,2) = b holds value index: bitwise mapping
            const unsigned int idx = ((l >> 4) & 1u) * 8u + ((l >> 3) & 1u) * 4u + ((l >> 2) & 1u) * 2u + ((l >> 1) & 1u);
            if ((l & 1u) == 0u && idx < 9u) gy[(unsigned long long)e * 9u + idx] = v[0];
        }
'''
b3=bb[:a]+red+bb[zz:]
out.append(ren(b3,'conv_backward_fused','b3'))
b4=b3.replace(loop,pf)
out.append(ren(b4,'conv_backward_fused','b4'))
# streaming floors (same launch shape: a warp per sender node)
out.append('''
extern "C" __global__ void __launch_bounds__(128) bs1(const float* __restrict__ x, const float* __restrict__ y, const float* __restrict__ w, const float* __restrict__ gz, const unsigned int* __restrict__ send_csr, float* __restrict__ gx, float* __restrict__ gy, float* __restrict__ gw, const unsigned int num_samples, const unsigned int a1, const unsigned int a2, const unsigned int num_nodes, const unsigned int num_edges, const unsigned int a3) {
  const unsigned int g = blockIdx.x * 128u + threadIdx.x; const unsigned int smp = g / 32u, l = g % 32u;
  if (smp >= num_samples) return;
  const unsigned int ids = num_nodes + 1u, oth = ids + num_edges;
  const unsigned int lo = send_csr[smp], hi = send_csr[smp + 1u];
  float acc = 0.f;
  for (unsigned int k = lo; k < hi; ++k) { const unsigned int e = send_csr[ids + k], r = send_csr[oth + k];
    for (unsigned int i = l; i < 960u; i += 32u) gw[(unsigned long long)e * 960u + i] = w[(unsigned long long)e * 960u + i];
    for (unsigned int i = l; i < 3136u; i += 32u) acc += gz[(unsigned long long)r * 3136u + i]; }
  gx[(unsigned long long)smp * 480u + l] = acc;
}
extern "C" __global__ void __launch_bounds__(128) bs2(const float* __restrict__ x, const float* __restrict__ y, const float* __restrict__ w, const float* __restrict__ gz, const unsigned int* __restrict__ send_csr, float* __restrict__ gx, float* __restrict__ gy, float* __restrict__ gw, const unsigned int num_samples, const unsigned int a1, const unsigned int a2, const unsigned int num_nodes, const unsigned int num_edges, const unsigned int a3) {
  const unsigned int g = blockIdx.x * 128u + threadIdx.x; const unsigned int smp = g / 32u, l = g % 32u;
  if (smp >= num_samples) return;
  const unsigned int ids = num_nodes + 1u;
  const unsigned int lo = send_csr[smp], hi = send_csr[smp + 1u];
  for (unsigned int k = lo; k < hi; ++k) { const unsigned int e = send_csr[ids + k];
    for (unsigned int i = l; i < 960u; i += 32u) gw[(unsigned long long)e * 960u + i] = w[(unsigned long long)e * 960u + i]; }
}
''')
# forward variants
out.append(ren(fb,'conv_forward_fused','f0'))
floop_re='''            for (unsigned int k = lo; k < hi; ++k) {
                const unsigned int e = recv_csr[ids + k];
                const unsigned int snd = recv_csr[oth + k];
'''
fpf='''            unsigned int e_n = 0u, snd_n = 0u;
            if (lo < hi) { e_n = recv_csr[ids + lo]; snd_n = recv_csr[oth + lo]; }
            for (unsigned int k = lo; k < hi; ++k) {
                const unsigned int e = e_n;
                const unsigned int snd = snd_n;
                if (k + 1u < hi) { e_n = recv_csr[ids + k + 1u]; snd_n = recv_csr[oth + k + 1u]; }
'''
assert fb.count(floop_re)==3, fb.count(floop_re)
out.append(ren(fb.replace(floop_re,fpf),'conv_forward_fused','f1'))
out.append(ren(fb.replace(floop_re,'#pragma unroll 2\n'+floop_re),'conv_forward_fused','f2'))
out.append('''
extern "C" __global__ void __launch_bounds__(224) fs(const float* __restrict__ x, const float* __restrict__ y, const float* __restrict__ w, const unsigned int* __restrict__ recv_csr, float* __restrict__ z, const unsigned int num_samples, const unsigned int a1, const unsigned int a2, const unsigned int num_nodes, const unsigned int num_edges, const unsigned int a3) {
  const unsigned int unit = blockIdx.x; if (unit >= num_samples) return;
  const unsigned int ids = num_nodes + 1u, oth = ids + num_edges;
  const unsigned int lo = recv_csr[unit], hi = recv_csr[unit + 1u];
  float acc = 0.f;
  for (unsigned int k = lo; k < hi; ++k) { const unsigned int e = recv_csr[ids + k], s = recv_csr[oth + k];
    for (unsigned int i = threadIdx.x; i < 960u; i += 224u) acc += w[(unsigned long long)e * 960u + i];
    for (unsigned int i = threadIdx.x; i < 480u; i += 224u) acc += x[(unsigned long long)s * 480u + i]; }
  for (unsigned int i = threadIdx.x; i < 3136u; i += 224u) z[(unsigned long long)unit * 3136u + i] = acc;
}
''')
out.append(ren(bb.replace('__launch_bounds__(128)','__launch_bounds__(128, 8)'),'conv_backward_fused','b5'))
out.append(ren(b4.replace('__launch_bounds__(128)','__launch_bounds__(128, 6)'),'conv_backward_fused','b6'))
out.append(ren(fb.replace('__launch_bounds__(224)','__launch_bounds__(224, 5)'),'conv_forward_fused','f3'))
out.append(ren(fb.replace(floop_re,fpf).replace('__launch_bounds__(224)','__launch_bounds__(224, 5)'),'conv_forward_fused','f4'))
out.append(open('main.cu').read())
open('variants.cu','w').write('\n'.join(out))
