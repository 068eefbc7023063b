//! Host-slice runs: upload, dispatch, read back — all awaited, never blocking on wasm.

use std::collections::BTreeMap;

use equikern_plan::{KernelPlan, Tensor};
use wgpu::util::DeviceExt;

use crate::dispatch::{plan_inputs, plan_outputs, tensor_elements, TensorBuffer};
use crate::{oneshot, CompiledPlan, Result, Runtime, WgpuError};

impl Runtime {
    /// A storage buffer initialised from `data` (at least 4 bytes, so empty tensors bind).
    pub fn upload(&self, label: &str, data: &[f32]) -> wgpu::Buffer {
        let pad = [0f32];
        let contents: &[f32] = if data.is_empty() { &pad } else { data };
        self.device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents: bytemuck::cast_slice(contents),
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_SRC
                    | wgpu::BufferUsages::COPY_DST,
            })
    }

    /// An uninitialised-by-us storage buffer of `elements` f32 (at least one).
    pub fn create_storage(&self, label: &str, elements: u64) -> wgpu::Buffer {
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: elements.max(1) * 4,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    }

    /// Run `plan` on host data: `inputs` gives every tensor the plan reads; returns every
    /// tensor it writes, as flat row-major `Vec<f32>`s.
    pub async fn run(
        &self,
        plan: &KernelPlan,
        batch: u32,
        inputs: &[(Tensor, &[f32])],
    ) -> Result<BTreeMap<Tensor, Vec<f32>>> {
        let compiled = self.prepare(plan).await?;
        self.run_compiled(&compiled, batch, inputs).await
    }

    /// [`Runtime::run`] for an already compiled plan.
    pub async fn run_compiled(
        &self,
        compiled: &CompiledPlan,
        batch: u32,
        inputs: &[(Tensor, &[f32])],
    ) -> Result<BTreeMap<Tensor, Vec<f32>>> {
        let plan = compiled.plan();
        let given: BTreeMap<Tensor, &[f32]> = inputs.iter().copied().collect();
        // Buffers over the device's limit would only fail later, inside wgpu.
        let max = self.limits.max_buffer_size;
        for t in plan_inputs(plan).into_iter().chain(plan_outputs(plan)) {
            let bytes = tensor_elements(plan, t, batch as u64) * 4;
            if bytes > max {
                return Err(WgpuError::Batch {
                    batch: batch as u64,
                    why: format!("tensor {t:?} needs {bytes} bytes, over the device's buffer limit {max}; split the batch"),
                });
            }
        }
        let mut owned: Vec<(Tensor, wgpu::Buffer)> = Vec::new();
        for t in plan_inputs(plan) {
            let want = tensor_elements(plan, t, batch as u64);
            let data = given.get(&t).ok_or_else(|| WgpuError::Binding {
                tensor: format!("{t:?}"),
                why: "missing input".into(),
            })?;
            if data.len() as u64 != want {
                return Err(WgpuError::Binding {
                    tensor: format!("{t:?}"),
                    why: format!("expected {want} elements, got {}", data.len()),
                });
            }
            owned.push((t, self.upload(&format!("{t:?}"), data)));
        }
        let outs = plan_outputs(plan);
        let mut out_lens = Vec::new();
        for t in &outs {
            let n = tensor_elements(plan, *t, batch as u64);
            let b = self.create_storage(&format!("{t:?}"), n);
            if self.options.poison_outputs {
                let nan = vec![f32::NAN; n.max(1) as usize];
                self.queue.write_buffer(&b, 0, bytemuck::cast_slice(&nan));
            }
            out_lens.push(n);
            owned.push((*t, b));
        }
        let bufs: Vec<TensorBuffer> = owned
            .iter()
            .map(|(t, b)| TensorBuffer::new(*t, b))
            .collect();
        // Validation errors of this run come back as errors, not as logged noise.
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let mut enc = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("equikern run"),
            });
        self.encode(compiled, batch, &bufs, &mut enc)?;
        // All outputs go to one staging buffer, read with one mapping.
        let total: u64 = out_lens.iter().map(|n| n.max(&1)).sum();
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("equikern readback"),
            size: total * 4,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut at = 0u64;
        for (i, t) in outs.iter().enumerate() {
            let b = &owned.iter().find(|(u, _)| u == t).expect("output buffer").1;
            let n = out_lens[i].max(1);
            enc.copy_buffer_to_buffer(b, 0, &staging, at * 4, n * 4);
            at += n;
        }
        self.queue.submit([enc.finish()]);
        if let Some(e) = scope.pop().await {
            return Err(WgpuError::Device(e.to_string()));
        }
        let flat = self.read_mapped(&staging).await?;
        let mut res = BTreeMap::new();
        let mut at = 0usize;
        for (i, t) in outs.iter().enumerate() {
            let n = out_lens[i] as usize;
            res.insert(*t, flat[at..at + n].to_vec());
            at += n.max(1);
        }
        Ok(res)
    }

    /// Blocking [`Runtime::run`] for native callers.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn run_blocking(
        &self,
        plan: &KernelPlan,
        batch: u32,
        inputs: &[(Tensor, &[f32])],
    ) -> Result<BTreeMap<Tensor, Vec<f32>>> {
        pollster::block_on(self.run(plan, batch, inputs))
    }

    /// Copy `elements` f32 from `buffer` (needs COPY_SRC) at byte `offset` to the host.
    pub async fn read_f32(
        &self,
        buffer: &wgpu::Buffer,
        offset: u64,
        elements: u64,
    ) -> Result<Vec<f32>> {
        if elements == 0 {
            return Ok(Vec::new());
        }
        if !offset.is_multiple_of(4) || offset + elements * 4 > buffer.size() {
            return Err(WgpuError::Readback(format!(
                "range {offset}+{} bytes outside buffer of {} bytes (or unaligned)",
                elements * 4,
                buffer.size()
            )));
        }
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("equikern readback"),
            size: elements * 4,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut enc = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
        enc.copy_buffer_to_buffer(buffer, offset, &staging, 0, elements * 4);
        self.queue.submit([enc.finish()]);
        self.read_mapped(&staging).await
    }

    /// Blocking [`Runtime::read_f32`] for native callers.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn read_f32_blocking(
        &self,
        buffer: &wgpu::Buffer,
        offset: u64,
        elements: u64,
    ) -> Result<Vec<f32>> {
        pollster::block_on(self.read_f32(buffer, offset, elements))
    }

    /// Wait for all submitted work (native); a no-op on the web.
    pub fn wait_idle(&self) -> Result<()> {
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map(|_| ())
            .map_err(|e| WgpuError::Device(e.to_string()))
    }

    async fn read_mapped(&self, staging: &wgpu::Buffer) -> Result<Vec<f32>> {
        let (tx, rx) = oneshot::channel();
        staging
            .slice(..)
            .map_async(wgpu::MapMode::Read, move |r| tx.send(r));
        // Native backends deliver the callback from poll; browsers from their event loop.
        #[cfg(not(target_arch = "wasm32"))]
        self.wait_idle()?;
        rx.await
            .map_err(|e| WgpuError::Readback(format!("map_async: {e}")))?;
        let v = {
            let view = staging
                .slice(..)
                .get_mapped_range()
                .map_err(|e| WgpuError::Readback(e.to_string()))?;
            bytemuck::cast_slice::<u8, f32>(&view).to_vec()
        };
        staging.unmap();
        Ok(v)
    }
}
