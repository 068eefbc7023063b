//! Per-sample cost model (FLOPs and bytes).
