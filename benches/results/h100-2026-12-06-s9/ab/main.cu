static bool ONCE;
typedef void (*bfn)(const float*, const float*, const float*, const float*, const unsigned int*, float*, float*, float*, unsigned int, unsigned int, unsigned int, unsigned int, unsigned int, unsigned int);
typedef void (*ffn)(const float*, const float*, const float*, const unsigned int*, float*, unsigned int, unsigned int, unsigned int, unsigned int, unsigned int, unsigned int);
static unsigned int hsh(unsigned int x){x^=x>>16;x*=0x7feb352du;x^=x>>15;x*=0x846ca68bu;x^=x>>16;return x;}
#define CK(x) do{cudaError_t e_=(x); if(e_!=cudaSuccess){printf("err %s line %d\n",cudaGetErrorString(e_),__LINE__);return 1;}}while(0)
static double rel(const std::vector<float>&p,const std::vector<float>&q){double n=0,d=0; for(size_t i=0;i<p.size();++i){double t=(double)p[i]-q[i]; if(t!=t) return 1e9; n+=t*t; d+=(double)q[i]*q[i];} return sqrt(n/d);}
int run(int L){
  const int N=L*L*L*8, K=28; const long E=(long)N*K;
  std::vector<unsigned> snd(E);
  for(int r=0;r<N;++r){int c=r/8; int cx=c%L, cy=(c/L)%L, cz=c/(L*L);
    for(int k=0;k<K;++k){unsigned h=hsh(r*64+k); int dx=(int)(h%3)-1, dy=(int)((h/3)%3)-1, dz=(int)((h/9)%3)-1; int b=(h/27)%8;
      int nx=(cx+dx+L)%L, ny=(cy+dy+L)%L, nz=(cz+dz+L)%L; snd[(long)r*K+k]=(unsigned)((nx+L*ny+L*L*nz)*8+b);}}
  std::vector<unsigned> csr(N+1+2*E,0); for(long e=0;e<E;++e) csr[snd[e]+1]++;
  for(int i=0;i<N;++i) csr[i+1]+=csr[i];
  std::vector<unsigned> pos(csr.begin(),csr.begin()+N);
  for(long e=0;e<E;++e){unsigned s=snd[e]; unsigned p=pos[s]++; csr[N+1+p]=(unsigned)e; csr[N+1+E+p]=(unsigned)(e/K);}
  std::vector<unsigned> rcsr(N+1+2*E,0); for(int r=0;r<=N;++r) rcsr[r]=(unsigned)(r*K);
  for(long e=0;e<E;++e){rcsr[N+1+e]=(unsigned)e; rcsr[N+1+E+e]=snd[e];}
  auto rnd=[&](size_t n,unsigned seed){std::vector<float> v(n); for(size_t i=0;i<n;++i) v[i]=(float)((int)(hsh((unsigned)i*2654435761u+seed)%20001)-10000)/10000.f; return v;};
  std::vector<float> x=rnd((size_t)N*480,1), y=rnd((size_t)E*9,2), w=rnd((size_t)E*960,3), gz=rnd((size_t)N*3136,4);
  float *dx,*dy,*dw,*dgz,*dgx,*dgy,*dgw,*dz; unsigned *dc,*drc;
  CK(cudaMalloc(&dx,x.size()*4)); CK(cudaMalloc(&dy,y.size()*4)); CK(cudaMalloc(&dw,w.size()*4)); CK(cudaMalloc(&dgz,gz.size()*4));
  CK(cudaMalloc(&dgx,x.size()*4)); CK(cudaMalloc(&dgy,y.size()*4)); CK(cudaMalloc(&dgw,w.size()*4)); CK(cudaMalloc(&dc,csr.size()*4)); CK(cudaMalloc(&drc,rcsr.size()*4)); CK(cudaMalloc(&dz,gz.size()*4));
  CK(cudaMemcpy(dx,x.data(),x.size()*4,cudaMemcpyHostToDevice)); CK(cudaMemcpy(dy,y.data(),y.size()*4,cudaMemcpyHostToDevice));
  CK(cudaMemcpy(dw,w.data(),w.size()*4,cudaMemcpyHostToDevice)); CK(cudaMemcpy(dgz,gz.data(),gz.size()*4,cudaMemcpyHostToDevice));
  CK(cudaMemcpy(dc,csr.data(),csr.size()*4,cudaMemcpyHostToDevice)); CK(cudaMemcpy(drc,rcsr.data(),rcsr.size()*4,cudaMemcpyHostToDevice));
  cudaEvent_t a,b; cudaEventCreate(&a); cudaEventCreate(&b);
  bfn bk[]={b0,b1,b2,b3,b4,b5,b6,bs1,bs2}; const char* bn[]={"b0 current","b1 index prefetch","b2 unroll2","b3 halving gy","b4 halving+prefetch","b5 b0 lb(128,8)","b6 b4 lb(128,6)","bs1 floor w->gw+gz","bs2 floor w->gw"};
  std::vector<float> rgx,rgy,rgw;
  unsigned bgrid=(unsigned)((N*32+127)/128);
  for(int v=0; v<9; ++v){
    CK(cudaMemset(dgx,0xff,x.size()*4)); CK(cudaMemset(dgy,0xff,y.size()*4)); CK(cudaMemset(dgw,0xff,w.size()*4));
    bk[v]<<<bgrid,128>>>(dx,dy,dw,dgz,dc,dgx,dgy,dgw,N,N,0,N,(unsigned)E,0); CK(cudaDeviceSynchronize());
    std::vector<float> gx(x.size()), gy(y.size()), gw(w.size());
    CK(cudaMemcpy(gx.data(),dgx,gx.size()*4,cudaMemcpyDeviceToHost)); CK(cudaMemcpy(gy.data(),dgy,gy.size()*4,cudaMemcpyDeviceToHost)); CK(cudaMemcpy(gw.data(),dgw,gw.size()*4,cudaMemcpyDeviceToHost));
    if(v==0){rgx=gx;rgy=gy;rgw=gw;}
    if(ONCE) continue;
    std::vector<float> ts;
    for(int i=0;i<25;++i){cudaEventRecord(a); bk[v]<<<bgrid,128>>>(dx,dy,dw,dgz,dc,dgx,dgy,dgw,N,N,0,N,(unsigned)E,0); cudaEventRecord(b); cudaEventSynchronize(b); float ms; cudaEventElapsedTime(&ms,a,b); if(i>=5) ts.push_back(ms);}
    std::sort(ts.begin(),ts.end());
    printf("N=%d E=%ld %-24s median %.3f ms min %.3f  rel gx %.2e gy %.2e gw %.2e\n",N,E,bn[v],ts[ts.size()/2],ts[0],rel(gx,rgx),rel(gy,rgy),rel(gw,rgw));
  }
  ffn fk[]={f0,f1,f2,f3,f4,fs}; const char* fnm[]={"f0 current","f1 index prefetch","f2 unroll2","f3 lb(224,5)","f4 prefetch lb(224,5)","fs floor w+x"};
  std::vector<float> rz;
  for(int v=0; v<6; ++v){
    CK(cudaMemset(dz,0xff,gz.size()*4));
    fk[v]<<<N,224>>>(dx,dy,dw,drc,dz,N,N,0,N,(unsigned)E,0); CK(cudaDeviceSynchronize());
    std::vector<float> z(gz.size()); CK(cudaMemcpy(z.data(),dz,z.size()*4,cudaMemcpyDeviceToHost));
    if(v==0) rz=z;
    if(ONCE) continue;
    std::vector<float> ts;
    for(int i=0;i<25;++i){cudaEventRecord(a); fk[v]<<<N,224>>>(dx,dy,dw,drc,dz,N,N,0,N,(unsigned)E,0); cudaEventRecord(b); cudaEventSynchronize(b); float ms; cudaEventElapsedTime(&ms,a,b); if(i>=5) ts.push_back(ms);}
    std::sort(ts.begin(),ts.end());
    printf("N=%d E=%ld %-24s median %.3f ms min %.3f  rel z %.2e\n",N,E,fnm[v],ts[ts.size()/2],ts[0],rel(z,rz));
  }
  cudaFree(dx);cudaFree(dy);cudaFree(dw);cudaFree(dgz);cudaFree(dgx);cudaFree(dgy);cudaFree(dgw);cudaFree(dc);cudaFree(drc);cudaFree(dz);
  return 0;
}
int main(int argc,char**argv){ ONCE=argc>1; if(!ONCE && run(8)) return 1; if(run(16)) return 1; return 0; }
