//! wgpu vs the f64 oracle over batch sizes 1, 7, 1000, and batches that must be split into
//! several dispatches (small binding limit; a samples-per-dispatch cap that is not a multiple
//! of the shared-weight chunk size).

mod wgpu_support;
use equikern::plan::{lower, Direction, Dtype};
use equikern::WgpuOptions;
use wgpu_support::{assert_spec, corpus, device};

fn spec(shared: bool) -> equikern::TpSpec {
    corpus::spec_for_mode(
        "uvu",
        "3x0e+3x1o+3x2e",
        "3x0e+3x1o",
        &["0e", "1o", "1e", "2e"],
        shared,
    )
}

/// Qualifies for the channel-fused backward (16 channels, all `uvu`).
fn fused_spec(shared: bool) -> equikern::TpSpec {
    corpus::spec_for_mode(
        "uvu",
        "16x0e+16x1o+16x2e",
        "1x0e+1x1o+1x2e",
        &["0e", "1o", "1e", "2e", "2o"],
        shared,
    )
}

/// `x` blocks of multiplicities 16, 8 and 12 (every `uvu` path, per-sample or shared
/// weights, a mul-2 `y` block): the channel-fused backward with guarded rows (16 channels);
/// the forward and double backward stay on row kernels.
fn mixed_mul_spec(shared: bool) -> equikern::TpSpec {
    let mut s = equikern::spec::builders::channelwise(
        &equikern::Irreps::parse("16x0e+8x1o+12x2e").unwrap(),
        &equikern::Irreps::parse("2x0e+1x1o+1x2e").unwrap(),
        &equikern::Irreps::parse("0e+1o+1e+2e+2o").unwrap(),
        false,
    );
    s.shared_weights = shared;
    s
}

/// Qualifies for the weight-staged forward and backward (all `uvw`, per-sample weights).
fn staged_spec() -> equikern::TpSpec {
    corpus::fully_connected("10x0e+6x1o", "1x0e+1x1o", "10x0e+6x1o+5x1e", false)
}

fn is_staged(dev: &equikern::Device, s: &equikern::TpSpec, dir: Direction) -> bool {
    let caps = dev.wgpu_runtime().unwrap().capabilities();
    lower(&s.build().unwrap(), dir, Dtype::F32, &caps)
        .unwrap()
        .kernels
        .iter()
        .any(|k| matches!(k.work, equikern::plan::Work::Staged(_)))
}

#[test]
fn weight_staged_batches() {
    let Some(dev) = device(Default::default()) else {
        return;
    };
    let s = staged_spec();
    for dir in [Direction::Forward, Direction::Backward] {
        assert!(is_staged(&dev, &s, dir), "{dir:?}: weight staging expected");
    }
    // The double backward binds 11 tensors: staged where the adapter allows that many.
    let caps = dev.wgpu_runtime().unwrap().capabilities();
    println!(
        "storage buffers per stage: {}",
        caps.max_storage_buffers_per_stage
    );
    assert_eq!(
        is_staged(&dev, &s, Direction::DoubleBackward),
        caps.max_storage_buffers_per_stage >= 11
    );
    for batch in [1, 7, 1000] {
        assert_spec(&dev, "uvw staged", &s, batch, 70 + batch as u64, true);
    }
}

fn is_fused(dev: &equikern::Device, s: &equikern::TpSpec) -> bool {
    let caps = dev.wgpu_runtime().unwrap().capabilities();
    lower(&s.build().unwrap(), Direction::Backward, Dtype::F32, &caps)
        .unwrap()
        .kernels
        .iter()
        .any(|k| matches!(k.work, equikern::plan::Work::Channels(_)))
}

#[test]
fn batches_1_7_1000() {
    let Some(dev) = device(Default::default()) else {
        return;
    };
    for shared in [false, true] {
        for batch in [1, 7, 1000] {
            assert_spec(&dev, "uvu", &spec(shared), batch, batch as u64, true);
        }
        let uvw = corpus::spec_for_mode("uvw", "3x0e+2x1o", "2x0e+1x1o", &["0e", "1o"], shared);
        assert_spec(&dev, "uvw", &uvw, 1000, 3, true);
        let f = fused_spec(shared);
        assert!(is_fused(&dev, &f), "channel fusion expected");
        for batch in [1, 7, 1000] {
            assert_spec(&dev, "uvu fused", &f, batch, 40 + batch as u64, true);
        }
        let mm = mixed_mul_spec(shared);
        assert!(is_fused(&dev, &mm), "mixed multiplicities: fusion expected");
        for batch in [1, 7, 1000] {
            assert_spec(
                &dev,
                "uvu mixed muls fused",
                &mm,
                batch,
                50 + batch as u64,
                true,
            );
        }
    }
}

#[test]
fn split_by_binding_limit() {
    let Some(dev) = device(WgpuOptions {
        max_storage_binding_bytes: Some(16 << 10),
        ..Default::default()
    }) else {
        return;
    };
    let caps = dev.wgpu_runtime().unwrap().capabilities();
    for shared in [false, true] {
        let s = spec(shared);
        let tp = s.build().unwrap();
        for d in [
            Direction::Forward,
            Direction::Backward,
            Direction::DoubleBackward,
        ] {
            let p = lower(&tp, d, Dtype::F32, &caps).unwrap();
            println!(
                "{d:?} shared={shared}: {} samples per dispatch",
                p.max_samples_per_dispatch
            );
            assert!(p.max_samples_per_dispatch < 1000, "no split would happen");
        }
        assert_spec(&dev, "uvu split (16 KiB)", &s, 1000, 21, true);
        let f = fused_spec(shared);
        if is_fused(&dev, &f) {
            assert_spec(&dev, "uvu fused split (16 KiB)", &f, 250, 23, true);
        }
    }
}

#[test]
fn split_by_dispatch_cap() {
    let Some(dev) = device(WgpuOptions {
        max_samples_per_dispatch: Some(37),
        ..Default::default()
    }) else {
        return;
    };
    for shared in [false, true] {
        assert_spec(
            &dev,
            "uvu split (37/dispatch)",
            &spec(shared),
            1000,
            22,
            true,
        );
        let f = fused_spec(shared);
        assert!(is_fused(&dev, &f), "channel fusion expected");
        assert_spec(&dev, "uvu fused split (37/dispatch)", &f, 1000, 24, true);
        let mm = mixed_mul_spec(shared);
        assert!(is_fused(&dev, &mm), "mixed multiplicities: fusion expected");
        assert_spec(
            &dev,
            "uvu mixed muls split (37/dispatch)",
            &mm,
            1000,
            26,
            true,
        );
    }
    let s = staged_spec();
    assert!(is_staged(&dev, &s, Direction::Backward));
    assert_spec(&dev, "uvw staged split (37/dispatch)", &s, 1000, 25, true);
}
