//! Kernel timing with CUDA events: warm-up, then the median of per-run event intervals.

use crate::device::CudaDevice;
use crate::Result;
use cudarc::driver::sys::CUevent_flags;

/// Device milliseconds of one run (all kernels of a direction, every dispatch).
#[derive(Clone, Debug, PartialEq)]
pub struct Timing {
    pub reps: usize,
    pub median_ms: f64,
    pub min_ms: f64,
    pub mean_ms: f64,
}

/// Runs `f` `warmup` times untimed, then `reps` times (at least one), each between two events.
pub(crate) fn measure(
    dev: &CudaDevice,
    warmup: usize,
    reps: usize,
    f: &mut dyn FnMut() -> Result<()>,
) -> Result<Timing> {
    let stream = dev.stream();
    for _ in 0..warmup {
        f()?;
    }
    stream.synchronize()?;
    let mut t = Vec::with_capacity(reps.max(1));
    for _ in 0..reps.max(1) {
        let a = stream.record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?;
        f()?;
        let b = stream.record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?;
        b.synchronize()?;
        t.push(a.elapsed_ms(&b)? as f64);
    }
    Ok(summarize(t))
}

fn summarize(mut t: Vec<f64>) -> Timing {
    t.sort_by(f64::total_cmp);
    let n = t.len();
    let median_ms = if n % 2 == 1 {
        t[n / 2]
    } else {
        0.5 * (t[n / 2 - 1] + t[n / 2])
    };
    Timing {
        reps: n,
        median_ms,
        min_ms: t[0],
        mean_ms: t.iter().sum::<f64>() / n as f64,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn median_of_even_and_odd() {
        assert_eq!(super::summarize(vec![3.0, 1.0, 2.0]).median_ms, 2.0);
        let t = super::summarize(vec![4.0, 1.0, 2.0, 3.0]);
        assert_eq!((t.median_ms, t.min_ms, t.mean_ms), (2.5, 1.0, 2.5));
    }
}
