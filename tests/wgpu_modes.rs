//! wgpu (lavapipe in CI) vs the f64 oracle: every connection mode, shared and per-sample
//! weights, all normalisations, l up to 6; forward, backward and double backward.

mod wgpu_support;
use wgpu_support::{assert_spec, corpus, device};

#[test]
fn every_mode_shared_and_per_sample() {
    let Some(dev) = device(Default::default()) else {
        return;
    };
    let mut worst = [0.0f64; 3];
    for shared in [false, true] {
        for (label, spec) in corpus::mode_specs(shared) {
            let e = assert_spec(&dev, &label, &spec, 7, 11, true);
            worst = [
                worst[0].max(e.fwd),
                worst[1].max(e.bwd),
                worst[2].max(e.dbl),
            ];
        }
    }
    println!(
        "modes worst: fwd {:.1e} bwd {:.1e} dbl {:.1e}",
        worst[0], worst[1], worst[2]
    );
}

#[test]
fn all_normalisations() {
    let Some(dev) = device(Default::default()) else {
        return;
    };
    for irn in corpus::IRREP_NORMS {
        for pn in corpus::PATH_NORMS {
            for mode in ["uvw", "uvu"] {
                let spec = corpus::spec_for_mode(
                    mode,
                    "2x0e+2x1o+2x2e",
                    "2x0e+2x1o",
                    &["0e", "1o", "2e"],
                    mode == "uvw",
                );
                let spec = corpus::with_norms(spec, irn, pn);
                assert_spec(&dev, &format!("{mode} {irn:?}/{pn:?}"), &spec, 7, 5, false);
            }
        }
    }
}

#[test]
fn high_l() {
    let Some(dev) = device(Default::default()) else {
        return;
    };
    for shared in [false, true] {
        for (label, spec) in corpus::high_l_specs(shared) {
            assert!(corpus::max_l(&spec) == 6);
            assert_spec(&dev, &label, &spec, 3, 13, true);
        }
    }
}
