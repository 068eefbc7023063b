//! [`CudaNeighbourList`]: the launches of `neighbours.cu` and the buffers they reuse.

use super::{bin_budget, Params, Setup, BLOCK, BOUNDS_INIT, SCAN_THREADS, SOURCE};
use crate::error::{ModelError, Result};
use crate::graph::{Graph, Structure};
use equikern::cuda_runtime::cudarc::driver::{
    CudaFunction, CudaSlice, CudaStream, CudaView, DeviceRepr, LaunchConfig, PushKernelArg,
    ValidAsZeroBits,
};
use equikern::cuda_runtime::{CacheLevel, CudaDevice};
use std::sync::Arc;

fn dev_err(e: impl std::fmt::Display) -> ModelError {
    ModelError::backend("cuda neighbour list", e)
}

struct Funcs {
    bounds: CudaFunction,
    bin: CudaFunction,
    scan: CudaFunction,
    fill: CudaFunction,
    sort_bins: CudaFunction,
    count: CudaFunction,
    write: CudaFunction,
    order: CudaFunction,
}

/// A device buffer that only grows (by a quarter more than asked, so that an MD run whose
/// sizes wander reallocates rarely).
struct Grow<T: DeviceRepr> {
    buf: Option<CudaSlice<T>>,
}

impl<T: DeviceRepr + ValidAsZeroBits> Grow<T> {
    fn new() -> Self {
        Grow { buf: None }
    }
    fn at_least(&mut self, stream: &Arc<CudaStream>, len: usize) -> Result<&mut CudaSlice<T>> {
        let have = self.buf.as_ref().map_or(0, |b| b.len());
        if have < len.max(1) {
            let want = (len + len / 4).max(16);
            self.buf = Some(stream.alloc_zeros::<T>(want).map_err(dev_err)?);
        }
        Ok(self.buf.as_mut().expect("allocated above"))
    }
    fn get(&self) -> Option<&CudaSlice<T>> {
        self.buf.as_ref()
    }
    fn bytes(&self) -> usize {
        self.buf.as_ref().map_or(0, |b| b.num_bytes())
    }
}

/// The radius graph on a CUDA device, identical to [`Graph::build`] (see the module docs).
/// Owns its device buffers, which only grow: build it once, call [`Self::build`] every MD
/// step; nothing is compiled after construction whatever the atom or edge counts.
///
/// After a build, [`Self::receiver`] / [`Self::sender`] (`u32`: `receiver = Graph::src`, the
/// centre; `sender = Graph::dst`), [`Self::shifts`] (`i64 × 3`) and [`Self::vectors`]
/// (`f64 × 3`) hold the edges on the device; [`Self::download`] gives the host [`Graph`].
pub struct CudaNeighbourList {
    dev: CudaDevice,
    f: Funcs,
    level: CacheLevel,
    atoms: usize,
    edges: usize,
    pos: Grow<f64>,
    p: Grow<f64>,
    q: Grow<i64>,
    mm: Grow<u64>,
    total: Grow<u64>,
    wrap: Grow<i64>,
    bin: Grow<u32>,
    bcount: Grow<u32>,
    bstart: Grow<u32>,
    cursor: Grow<u32>,
    members: Grow<u32>,
    counts: Grow<u32>,
    offsets: Grow<u32>,
    ssrc: Grow<u32>,
    sdst: Grow<u32>,
    sshift: Grow<i64>,
    src: Grow<u32>,
    dst: Grow<u32>,
    shift: Grow<i64>,
    vec: Grow<f64>,
}

fn grid(n: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (
            (n as u64).div_ceil(BLOCK as u64).clamp(1, 65535) as u32,
            1,
            1,
        ),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn one_block() -> LaunchConfig {
    LaunchConfig {
        grid_dim: (1, 1, 1),
        block_dim: (SCAN_THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

impl CudaNeighbourList {
    /// Loads the kernels on `dev` (NVRTC the first time on this machine, then the disk cache).
    pub fn new(dev: &CudaDevice) -> Result<Self> {
        let (module, level) = dev
            .load_source("equikern-neighbours-v1", SOURCE)
            .map_err(dev_err)?;
        let f = |n: &str| module.load_function(n).map_err(dev_err);
        Ok(CudaNeighbourList {
            dev: dev.clone(),
            f: Funcs {
                bounds: f("ek_nl_bounds")?,
                bin: f("ek_nl_bin")?,
                scan: f("ek_nl_scan")?,
                fill: f("ek_nl_fill")?,
                sort_bins: f("ek_nl_sort_bins")?,
                count: f("ek_nl_count")?,
                write: f("ek_nl_write")?,
                order: f("ek_nl_order")?,
            },
            level,
            atoms: 0,
            edges: 0,
            pos: Grow::new(),
            p: Grow::new(),
            q: Grow::new(),
            mm: Grow::new(),
            total: Grow::new(),
            wrap: Grow::new(),
            bin: Grow::new(),
            bcount: Grow::new(),
            bstart: Grow::new(),
            cursor: Grow::new(),
            members: Grow::new(),
            counts: Grow::new(),
            offsets: Grow::new(),
            ssrc: Grow::new(),
            sdst: Grow::new(),
            sshift: Grow::new(),
            src: Grow::new(),
            dst: Grow::new(),
            shift: Grow::new(),
            vec: Grow::new(),
        })
    }

    /// Where the module came from (NVRTC now, the disk cache, or memory).
    pub fn compile_level(&self) -> CacheLevel {
        self.level
    }

    /// The device it runs on.
    pub fn device(&self) -> &CudaDevice {
        &self.dev
    }

    /// Builds the edges of `s` (strictly shorter than `cutoff`) on the device; returns their
    /// number. The errors of [`Graph::build`] for the same input.
    pub fn build(&mut self, s: &Structure, cutoff: f64) -> Result<usize> {
        s.validate()?;
        let n = s.positions.len();
        let flat: Vec<f64> = s.positions.iter().flatten().copied().collect();
        let stream = self.dev.stream().clone();
        let pos = self.pos.at_least(&stream, flat.len())?;
        if !flat.is_empty() {
            stream
                .memcpy_htod(&flat, &mut pos.slice_mut(0..flat.len()))
                .map_err(dev_err)?;
        }
        let pos = self.pos.buf.take().expect("allocated above");
        let r = self.build_with(&pos, n, s.cell, s.pbc, cutoff);
        self.pos.buf = Some(pos);
        r
    }

    /// [`Self::build`] for positions already on the device (`3·atoms` f64, x y z per atom;
    /// not checked for finiteness: a non-finite coordinate gives an unspecified but
    /// in-bounds result).
    pub fn build_on_device(
        &mut self,
        positions: &CudaSlice<f64>,
        atoms: usize,
        cell: [[f64; 3]; 3],
        pbc: [bool; 3],
        cutoff: f64,
    ) -> Result<usize> {
        if positions.len() < 3 * atoms {
            return Err(ModelError::input(
                "positions",
                format!(
                    "{} f64 on the device for {atoms} atoms (3 per atom)",
                    positions.len()
                ),
            ));
        }
        self.build_with(positions, atoms, cell, pbc, cutoff)
    }

    fn build_with(
        &mut self,
        pos: &CudaSlice<f64>,
        n: usize,
        cell: [[f64; 3]; 3],
        pbc: [bool; 3],
        cutoff: f64,
    ) -> Result<usize> {
        let setup = Setup::new(cell, pbc, cutoff)?;
        self.atoms = n;
        self.edges = 0;
        if n == 0 {
            return Ok(0);
        }
        if n >= u32::MAX as usize {
            return Err(ModelError::input(
                "positions",
                format!("{n} atoms: more than 2^32 − 2"),
            ));
        }
        let n32 = n as u32;
        let stream = self.dev.stream().clone();
        let f = &self.f;
        let params_buf = |g: &mut Grow<f64>, gq: &mut Grow<i64>, prm: &Params| -> Result<()> {
            stream
                .memcpy_htod(&prm.p, &mut g.at_least(&stream, 25)?.slice_mut(0..25))
                .map_err(dev_err)?;
            stream
                .memcpy_htod(&prm.q, &mut gq.at_least(&stream, 12)?.slice_mut(0..12))
                .map_err(dev_err)?;
            Ok(())
        };
        // 1. bounds of the open directions
        let mut bounds = BOUNDS_INIT;
        if setup.needs_bounds() {
            params_buf(&mut self.p, &mut self.q, &setup.bounds_params())?;
            let mm = self.mm.at_least(&stream, 6)?;
            stream
                .memcpy_htod(&BOUNDS_INIT, &mut mm.slice_mut(0..6))
                .map_err(dev_err)?;
            let (p, q) = (self.p.get().expect("set"), self.q.get().expect("set"));
            let mut b = stream.launch_builder(&f.bounds);
            b.arg(pos).arg(p).arg(q).arg(&n32).arg(&mut *mm);
            // SAFETY: pos holds 3n f64 (checked by the callers), p 25, q 12, mm 6.
            unsafe { b.launch(grid(n)) }.map_err(dev_err)?;
            let got = stream.clone_dtoh(&mm.slice(0..6)).map_err(dev_err)?;
            bounds.copy_from_slice(&got);
        }
        let prm = setup.params(&bounds, bin_budget(n))?;
        params_buf(&mut self.p, &mut self.q, &prm)?;
        let nb = prm.bins;
        let nb32 = nb as u32;
        // 2. bins: count, scan, fill, sort
        let wrap = self.wrap.at_least(&stream, 3 * n)?;
        let bin = self.bin.at_least(&stream, n)?;
        let bcount = self.bcount.at_least(&stream, nb)?;
        stream
            .memset_zeros(&mut bcount.slice_mut(0..nb))
            .map_err(dev_err)?;
        let (p, q) = (self.p.get().expect("set"), self.q.get().expect("set"));
        let mut b = stream.launch_builder(&f.bin);
        b.arg(pos)
            .arg(p)
            .arg(q)
            .arg(&n32)
            .arg(&mut *wrap)
            .arg(&mut *bin)
            .arg(&mut *bcount);
        // SAFETY: wrap 3n, bin n, bcount nb (every device bin id < nb by construction).
        unsafe { b.launch(grid(n)) }.map_err(dev_err)?;
        let bstart = self.bstart.at_least(&stream, nb + 1)?;
        let total = self.total.at_least(&stream, 1)?;
        let mut b = stream.launch_builder(&f.scan);
        b.arg(&*bcount)
            .arg(&mut *bstart)
            .arg(&nb32)
            .arg(&mut *total);
        // SAFETY: bcount nb, bstart nb + 1, total 1; one block of SCAN_THREADS.
        unsafe { b.launch(one_block()) }.map_err(dev_err)?;
        let cursor = self.cursor.at_least(&stream, nb)?;
        stream
            .memset_zeros(&mut cursor.slice_mut(0..nb))
            .map_err(dev_err)?;
        let members = self.members.at_least(&stream, n)?;
        let mut b = stream.launch_builder(&f.fill);
        b.arg(&*bin)
            .arg(&*bstart)
            .arg(&n32)
            .arg(&mut *cursor)
            .arg(&mut *members);
        // SAFETY: bstart[b] + slot < n for every atom (the counts sum to n).
        unsafe { b.launch(grid(n)) }.map_err(dev_err)?;
        let mut b = stream.launch_builder(&f.sort_bins);
        b.arg(&*bstart).arg(&nb32).arg(&mut *members);
        // SAFETY: bstart nb + 1 entries, members n.
        unsafe { b.launch(grid(nb)) }.map_err(dev_err)?;
        // 3. edges: count, scan, write, order
        let counts = self.counts.at_least(&stream, n)?;
        let mut b = stream.launch_builder(&f.count);
        b.arg(pos)
            .arg(p)
            .arg(q)
            .arg(&n32)
            .arg(&*wrap)
            .arg(&*bin)
            .arg(&*bstart)
            .arg(&*members)
            .arg(&mut *counts);
        // SAFETY: reads the arrays above within their lengths; counts n.
        unsafe { b.launch(grid(n)) }.map_err(dev_err)?;
        let offsets = self.offsets.at_least(&stream, n + 1)?;
        let mut b = stream.launch_builder(&f.scan);
        b.arg(&*counts)
            .arg(&mut *offsets)
            .arg(&n32)
            .arg(&mut *total);
        // SAFETY: counts n, offsets n + 1, total 1.
        unsafe { b.launch(one_block()) }.map_err(dev_err)?;
        // the lead edges; the list is them and their reverses
        let l64 = stream.clone_dtoh(&total.slice(0..1)).map_err(dev_err)?[0];
        let e64 = 2 * l64;
        if e64 >= u32::MAX as u64 {
            return Err(ModelError::input(
                "cutoff",
                format!("{e64} edges: more than the u32 edge offsets hold"),
            ));
        }
        let e = e64 as usize;
        let (l, l32) = (l64 as usize, l64 as u32);
        let ssrc = self.ssrc.at_least(&stream, l)?;
        let sdst = self.sdst.at_least(&stream, l)?;
        let sshift = self.sshift.at_least(&stream, 3 * l)?;
        if e > 0 {
            let mut b = stream.launch_builder(&f.write);
            b.arg(pos)
                .arg(p)
                .arg(q)
                .arg(&n32)
                .arg(&*wrap)
                .arg(&*bin)
                .arg(&*bstart)
                .arg(&*members)
                .arg(&*offsets)
                .arg(&mut *ssrc)
                .arg(&mut *sdst)
                .arg(&mut *sshift);
            // SAFETY: atom i writes offsets[i] .. offsets[i + 1] ≤ l (the same visit as count).
            unsafe { b.launch(grid(n)) }.map_err(dev_err)?;
        }
        let src = self.src.at_least(&stream, e)?;
        let dst = self.dst.at_least(&stream, e)?;
        let shift = self.shift.at_least(&stream, 3 * e)?;
        let vec = self.vec.at_least(&stream, 3 * e)?;
        if e > 0 {
            let mut b = stream.launch_builder(&f.order);
            b.arg(pos)
                .arg(p)
                .arg(&l32)
                .arg(&*offsets)
                .arg(&*ssrc)
                .arg(&*sdst)
                .arg(&*sshift)
                .arg(&mut *src)
                .arg(&mut *dst)
                .arg(&mut *shift)
                .arg(&mut *vec);
            // SAFETY: each staged lead goes to p = lo + rank < offsets[i + 1] ≤ l and its
            // reverse to l + p < 2l = e.
            unsafe { b.launch(grid(l)) }.map_err(dev_err)?;
        }
        self.edges = e;
        Ok(e)
    }

    /// Atoms of the last build.
    pub fn atoms(&self) -> usize {
        self.atoms
    }

    /// Edges of the last build.
    pub fn edges(&self) -> usize {
        self.edges
    }

    /// Lead edges of the last build: the list is in [`Graph::build`]'s pair order (edge
    /// `pairs + p` is edge `p` reversed), `edges = 2 · pairs`.
    pub fn pairs(&self) -> usize {
        self.edges / 2
    }

    fn view<T: DeviceRepr + ValidAsZeroBits>(g: &Grow<T>, len: usize) -> Option<CudaView<'_, T>> {
        g.get().map(|b| b.slice(0..len))
    }

    /// Centres (`Graph::src`) of the last build's edges (`None` before the first edge).
    pub fn receiver(&self) -> Option<CudaView<'_, u32>> {
        Self::view(&self.src, self.edges)
    }

    /// Neighbours (`Graph::dst`).
    pub fn sender(&self) -> Option<CudaView<'_, u32>> {
        Self::view(&self.dst, self.edges)
    }

    /// Image shifts, 3 per edge.
    pub fn shifts(&self) -> Option<CudaView<'_, i64>> {
        Self::view(&self.shift, 3 * self.edges)
    }

    /// Edge vectors `pos_j − pos_i + S·cell`, 3 per edge.
    pub fn vectors(&self) -> Option<CudaView<'_, f64>> {
        Self::view(&self.vec, 3 * self.edges)
    }

    /// Device memory held by the buffers (bytes).
    pub fn device_bytes(&self) -> usize {
        self.pos.bytes()
            + self.wrap.bytes()
            + self.bin.bytes()
            + self.bcount.bytes()
            + self.bstart.bytes()
            + self.cursor.bytes()
            + self.members.bytes()
            + self.counts.bytes()
            + self.offsets.bytes()
            + self.ssrc.bytes()
            + self.sdst.bytes()
            + self.sshift.bytes()
            + self.src.bytes()
            + self.dst.bytes()
            + self.shift.bytes()
            + self.vec.bytes()
    }

    /// The last build as a host [`Graph`] (equal to `Graph::build` of the same input).
    pub fn download(&self) -> Result<Graph> {
        let e = self.edges;
        if e == 0 {
            return Ok(Graph::default());
        }
        let stream = self.dev.stream();
        let get = |v: Option<CudaView<'_, u32>>| -> Result<Vec<u32>> {
            stream.clone_dtoh(&v.expect("edges exist")).map_err(dev_err)
        };
        let src = get(self.receiver())?;
        let dst = get(self.sender())?;
        let shift = stream
            .clone_dtoh(&self.shifts().expect("edges exist"))
            .map_err(dev_err)?;
        let vec = stream
            .clone_dtoh(&self.vectors().expect("edges exist"))
            .map_err(dev_err)?;
        Ok(Graph {
            src: src.into_iter().map(|i| i as usize).collect(),
            dst: dst.into_iter().map(|j| j as usize).collect(),
            shift: shift.chunks_exact(3).map(|c| [c[0], c[1], c[2]]).collect(),
            vec: vec.chunks_exact(3).map(|c| [c[0], c[1], c[2]]).collect(),
            pairs: e / 2,
        })
    }
}
