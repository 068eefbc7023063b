//! Compiling a plan's kernels into pipelines, cached per plan.

use std::sync::Arc;

use equikern_emit::{emit_wgsl, EmittedKernel};
use equikern_plan::{Capabilities, KernelPlan};

use crate::{Result, Runtime, WgpuError};

/// A plan whose kernels are compiled for one device.
pub struct CompiledPlan {
    pub(crate) plan: KernelPlan,
    pub(crate) kernels: Vec<CompiledKernel>,
}

pub(crate) struct CompiledKernel {
    /// Index of the kernel in the plan.
    pub index: usize,
    pub emitted: EmittedKernel,
    pub layout: wgpu::BindGroupLayout,
    pub pipeline: wgpu::ComputePipeline,
}

impl CompiledPlan {
    pub fn plan(&self) -> &KernelPlan {
        &self.plan
    }

    /// The WGSL source of each kernel, in run order.
    pub fn sources(&self) -> impl Iterator<Item = (&str, &str)> {
        self.kernels
            .iter()
            .map(|k| (k.emitted.name.as_str(), k.emitted.source.as_str()))
    }
}

/// Can a plan lowered for `plan` run on a device offering `dev`?
fn fits(plan: &Capabilities, dev: &Capabilities) -> bool {
    plan.max_invocations_per_workgroup <= dev.max_invocations_per_workgroup
        && plan.max_workgroup_size_x <= dev.max_workgroup_size_x
        && plan.workgroup_memory_bytes <= dev.workgroup_memory_bytes
        && plan.max_workgroups_per_dim <= dev.max_workgroups_per_dim
        && plan.max_storage_buffers_per_stage <= dev.max_storage_buffers_per_stage
        && (!plan.subgroups || (dev.subgroups && plan.subgroup_size == dev.subgroup_size))
}

impl Runtime {
    /// Compile (or fetch from the cache) the pipelines of `plan`.
    pub async fn prepare(&self, plan: &KernelPlan) -> Result<Arc<CompiledPlan>> {
        if !fits(&plan.caps, &self.caps) {
            return Err(WgpuError::CapsMismatch {
                plan: Box::new(plan.caps),
                device: Box::new(self.caps),
            });
        }
        // Keyed by the plan's stable hash; a hit is confirmed by comparing the plans.
        let key = plan.hash_hex();
        if let Some(c) = self.lock_cache().get(&key) {
            if c.plan == *plan {
                return Ok(c.clone());
            }
        }
        let emitted = emit_wgsl(plan)?;
        let mut kernels = Vec::with_capacity(emitted.len());
        for (i, e) in emitted.into_iter().enumerate() {
            kernels.push(self.compile(i, e).await?);
        }
        let compiled = Arc::new(CompiledPlan {
            plan: plan.clone(),
            kernels,
        });
        self.lock_cache().insert(key, compiled.clone());
        Ok(compiled)
    }

    /// Blocking [`Runtime::prepare`] for native callers.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn prepare_blocking(&self, plan: &KernelPlan) -> Result<Arc<CompiledPlan>> {
        pollster::block_on(self.prepare(plan))
    }

    /// Number of compiled plans held.
    pub fn cached_plans(&self) -> usize {
        self.lock_cache().len()
    }

    fn lock_cache(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, Arc<CompiledPlan>>> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn compile(&self, index: usize, e: EmittedKernel) -> Result<CompiledKernel> {
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = self
            .device
            .create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(&e.name),
                source: wgpu::ShaderSource::Wgsl(e.source.as_str().into()),
            });
        let mut entries: Vec<wgpu::BindGroupLayoutEntry> = e
            .bindings
            .iter()
            .map(|b| wgpu::BindGroupLayoutEntry {
                binding: b.binding,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Storage {
                        read_only: b.read_only,
                    },
                    has_dynamic_offset: false,
                    min_binding_size: None,
                },
                count: None,
            })
            .collect();
        entries.push(wgpu::BindGroupLayoutEntry {
            binding: e.params.binding,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Uniform,
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        });
        let layout = self
            .device
            .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: Some(&e.name),
                entries: &entries,
            });
        let pl = self
            .device
            .create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: Some(&e.name),
                bind_group_layouts: &[Some(&layout)],
                immediate_size: 0,
            });
        let pipeline = self
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(&e.name),
                layout: Some(&pl),
                module: &module,
                entry_point: Some(&e.entry_point),
                compilation_options: Default::default(),
                cache: None,
            });
        if let Some(err) = scope.pop().await {
            return Err(WgpuError::Pipeline {
                kernel: e.name.clone(),
                why: err.to_string(),
            });
        }
        Ok(CompiledKernel {
            index,
            emitted: e,
            layout,
            pipeline,
        })
    }
}
