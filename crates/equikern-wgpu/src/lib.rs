//! wgpu runtime for equikern kernel plans.
