//! Which implementation computes a divergence: the one place that decides, and the table of
//! what runs when (docs/ARCHITECTURE.md repeats it).
//!
//! | device | dtype | condition | Sinkhorn | MMD |
//! |---|---|---|---|---|
//! | Flex, NdArray | f32, f64 | `n m <` [`host_tiled_min_pairs`], MMD weights without gradient | [`Path::Host`] | [`Path::Host`] |
//! | Flex, NdArray | f32, f64 | `n m >=` [`host_tiled_min_pairs`], MMD weights without gradient | [`Path::HostTiled`] | [`Path::HostTiled`] |
//! | Flex, NdArray | f32, f64 | MMD weights with a gradient | (as above) | [`Path::TensorOps`] |
//! | wgpu | f32 | `n m >=` [`fused_min_pairs`], `d <=` [`MAX_FUSED_DIM`], MMD weights without gradient | [`Path::Fused`] | [`Path::Fused`] |
//! | wgpu | f32 | otherwise | [`Path::TensorOps`] | [`Path::TensorOps`] |
//! | wgpu | f64 | — | refused | refused |
//! | other (f16, bf16, ...) | | | [`Path::TensorOps`] | [`Path::TensorOps`] |
//!
//! - **Host**: the CPU devices' tensors already live in host memory; the loops run there on
//!   plain vectors, vectorised and threaded (`crate::host`). Memory: the dense cost / kernel
//!   matrices, `O(n m + n^2 + m^2)`.
//! - **HostTiled**: the same loops with the costs and kernel values computed from the points
//!   inside each sweep, one cache-sized tile at a time (`crate::host::tiled`); memory
//!   `O((n + m) d)`, plus the truncated softmins' columns for the Sinkhorn divergence
//!   (bounded, `crate::host::tiled::Truncated`). Taken from [`host_tiled_min_pairs`] on, where
//!   it is faster (measured, see the constants).
//! - **Fused**: CubeCL kernels that never store an `n x m` matrix (`crate::fused`), float32
//!   accumulation; memory `O((n + m) d)`.
//! - **TensorOps**: burn tensor operations on any device (`crate::tensor_ops`), the reference
//!   the other two are tested against; several dense matrices.
//!
//! Float64 on wgpu is refused: WGSL has no float64, and the software Vulkan of CI returns
//! garbage for it; the CPU devices compute in float64.
//!
//! Before a path runs, [`check_memory`] compares its estimated peak memory with what the
//! machine has available (host paths) and refuses with the estimate instead of being killed.
use burn::backend::{DispatchDevice, RuntimeId};
use burn::tensor::{DType, Device};

use crate::config::{Bytes, LossError};

pub use crate::config::Path;

pub use crate::fused::MAX_FUSED_DIM;

/// Which divergence is being routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The debiased Sinkhorn divergence.
    Sinkhorn,
    /// MMD².
    Mmd,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Sinkhorn => "Sinkhorn",
            Kind::Mmd => "MMD",
        }
    }
}

/// Smallest `n * m` for which the fused path is used on a wgpu device that is a hardware GPU
/// (n = m = 64, the smallest size measured).
///
/// From `bench_fused` (crates/fairrep-loss/examples/bench_fused.rs), value + gradient, on an
/// NVIDIA H200 through Vulkan: the fused path was faster than the tensor-op path at every
/// size measured, n = m from 64 to 16384, d = 8 and 32 (docs/BENCHMARKS.md), and the tensor-op
/// path cannot run at all from n = m = 50,000 (wgpu refuses its 10 GB `n x m` buffer).
pub const FUSED_MIN_PAIRS_GPU: usize = 64 * 64;

/// Smallest `n * m` for which the fused path is used on a software Vulkan (a wgpu device with
/// no physical card behind it, lavapipe/llvmpipe) (n = m = 1024).
///
/// From `bench_fused` on lavapipe (2 CPU cores), time ratio tensor-op / fused, d = 8 / 32:
/// softmin 2.9x / 1.1x and kernel sum 1.5x / 1.2x at n = m = 256; 2.7x / 1.3x and 2.0x / 1.3x
/// at 1024; 2.8x / 0.95x and 2.8x / 0.8x at 4096. The fused path is taken from 1024 on, where
/// it is faster or within 20%, because its memory is `O((n + m) d)` where the tensor-op path
/// holds several `n x m` matrices (64 MiB each at 4096). Below, where the memory is small
/// either way, the tensor-op path is kept on this device so that the test suite's small
/// problems on the software Vulkan of CI keep that path checked against the fixtures too (the
/// fused path is checked against it directly).
pub const FUSED_MIN_PAIRS_SOFTWARE: usize = 1 << 20;

/// Smallest `n * m` for which the Sinkhorn divergence on a CPU device takes the tiled host
/// path ([`Path::HostTiled`]) instead of the stored cost matrices ([`Path::Host`])
/// (n = m = 512).
///
/// From `bench_divergences --path host` and `--path host-tiled` (value + gradient, float32,
/// d = 16, eps = 0.1, scaling 0.9, tolerance 1e-3, 2 cores, quiet machine;
/// docs/BENCHMARKS.md), wall time stored / tiled: 0.42x at n = m = 128, 1.16x at 256, 1.17x at
/// 512, 1.58x at 1024, 2.25x at 2048, with peak memory 20 / 16 MiB at 512 and 113 / 24 MiB at
/// 2048. The tiled sweep computes every cost again, but its softmins at the target eps sum
/// only the columns that can matter (`crate::host::tiled::Truncated`), which the stored path
/// does not; from 512 on (256 is within the noise) it is faster and smaller.
pub const HOST_TILED_MIN_PAIRS_SINKHORN: usize = 512 * 512;

/// Smallest `n * m` for which the MMD on a CPU device takes the tiled host path (n = m =
/// 1024). Measured as [`HOST_TILED_MIN_PAIRS_SINKHORN`] with three bandwidths, time tiled /
/// stored: 1.9x at n = m = 512 (loaded machine), 0.53x at 1024, 0.56x at 2048, 0.28x at 10,000
/// (25 MiB of peak memory against 1.17 GiB): without a stored matrix to read, the tiled sweep
/// is faster from 1024 on.
pub const HOST_TILED_MIN_PAIRS_MMD: usize = 1024 * 1024;

/// The smallest `n * m` for which `kind` on a CPU device takes [`Path::HostTiled`].
pub fn host_tiled_min_pairs(kind: Kind) -> usize {
    match kind {
        Kind::Sinkhorn => HOST_TILED_MIN_PAIRS_SINKHORN,
        Kind::Mmd => HOST_TILED_MIN_PAIRS_MMD,
    }
}

/// Whether `device` is a CPU device whose tensors live in host memory (Flex, NdArray).
pub fn is_cpu(device: &Device) -> bool {
    #[allow(deprecated)]
    let cpu = matches!(
        device.clone().inner().as_dispatch(),
        DispatchDevice::Flex(_) | DispatchDevice::NdArray(_)
    );
    cpu
}

/// Whether `device` is a wgpu device (autodiff or not).
pub fn is_wgpu(device: &Device) -> bool {
    match device.clone().inner().as_dispatch() {
        DispatchDevice::Cube(cube) => cube.runtime() == RuntimeId::Wgpu,
        _ => false,
    }
}

/// The smallest `n * m` for which the divergences on `device` take the fused path:
/// [`FUSED_MIN_PAIRS_GPU`] on a wgpu device backed by a card, [`FUSED_MIN_PAIRS_SOFTWARE`] on
/// a software Vulkan; `None` off wgpu.
pub fn fused_min_pairs(device: &Device) -> Option<usize> {
    if !is_wgpu(device) {
        return None;
    }
    let hardware = device.identity().is_some_and(|id| id.physical.is_some());
    Some(if hardware {
        FUSED_MIN_PAIRS_GPU
    } else {
        FUSED_MIN_PAIRS_SOFTWARE
    })
}

/// The path of a divergence between `n` and `m` points of dimension `d`, in `dtype`, on
/// `device`; `weights_tracked`: the MMD's weights carry a gradient (only the tensor-op path
/// differentiates them; the Sinkhorn divergence never does). See the module table.
pub fn route(
    kind: Kind,
    device: &Device,
    dtype: DType,
    [n, m, d]: [usize; 3],
    weights_tracked: bool,
) -> Result<Path, LossError> {
    let float = matches!(dtype, DType::F32 | DType::F64);
    if is_cpu(device) && float {
        return Ok(if kind == Kind::Mmd && weights_tracked {
            Path::TensorOps
        } else if n.saturating_mul(m) >= host_tiled_min_pairs(kind) {
            Path::HostTiled
        } else {
            Path::Host
        });
    }
    if is_wgpu(device) && dtype == DType::F64 {
        return Err(LossError::InvalidConfig {
            key: "dtype",
            expected: "float32 on wgpu (float64 runs on the CPU devices, flex or ndarray)".into(),
            found: "float64".into(),
        });
    }
    let fused = dtype == DType::F32
        && d <= MAX_FUSED_DIM
        && !(kind == Kind::Mmd && weights_tracked)
        && fused_min_pairs(device).is_some_and(|min| n.saturating_mul(m) >= min);
    Ok(if fused { Path::Fused } else { Path::TensorOps })
}

/// Checks that `path`, asked for explicitly (benchmarks, tests), can compute `kind` on
/// `device` in `dtype`: the host paths on the CPU devices in float32 or float64 (the MMD
/// without a gradient for its weights), the fused path where [`route`] would take it at any
/// size, the tensor-op path everywhere but float64 on wgpu.
pub fn check_path(
    kind: Kind,
    path: Path,
    device: &Device,
    dtype: DType,
    [n, m, d]: [usize; 3],
    weights_tracked: bool,
) -> Result<(), LossError> {
    // Whatever the routing table refuses (float64 on wgpu) no path runs.
    route(kind, device, dtype, [n, m, d], weights_tracked)?;
    let float = matches!(dtype, DType::F32 | DType::F64);
    let ok = match path {
        Path::Host | Path::HostTiled => {
            is_cpu(device) && float && !(kind == Kind::Mmd && weights_tracked)
        }
        Path::Fused => {
            dtype == DType::F32
                && d <= MAX_FUSED_DIM
                && !(kind == Kind::Mmd && weights_tracked)
                && is_wgpu(device)
        }
        Path::TensorOps => true,
    };
    if ok {
        Ok(())
    } else {
        Err(LossError::InvalidConfig {
            key: "path",
            expected: "a path that runs on this device and dtype (route.rs, its table)".into(),
            found: format!("{path} for {} in {dtype:?}", kind.name()),
        })
    }
}

/// Estimated peak bytes of one divergence with gradient on `path` (float elements of
/// `elem_bytes` bytes): the dense matrices each path holds at its peak, in elements.
///
/// - Sinkhorn, host: the four cost matrices as tensors and as host vectors (`2 (2 n m + n^2 +
///   m^2)`), plus the final step's plans (`2 n m + n^2 + m^2`).
/// - Sinkhorn, tensor ops: the four cost matrices, their scaled copies, and three `n x m`
///   temporaries of a softmin.
/// - MMD, host: the three Gram blocks as tensors and host vectors, and the kernel matrices kept
///   for the gradient.
/// - MMD, tensor ops: the three blocks' distances, kernels and autodiff copies.
/// - Fused: the points, potentials and per-row accumulators (`O((n + m) d)`), with the
///   column-split partials.
/// - Host, tiled: the clouds in two centrings and two layouts, their barycentres or kernel
///   row sums, the potentials and their updates (`O((n + m) d)`), and one tile per thread.
pub fn estimated_bytes(kind: Kind, path: Path, [n, m, d]: [usize; 3], elem_bytes: usize) -> u64 {
    let (n, m, d) = (n as u128, m as u128, d as u128);
    let cross = n * m;
    let selfs = n * n + m * m;
    let elems = match (kind, path) {
        (Kind::Sinkhorn, Path::Host) => 3 * (2 * cross) + 3 * selfs,
        (Kind::Sinkhorn, Path::TensorOps) => 4 * (2 * cross + selfs) + 3 * cross.max(n * n),
        (Kind::Mmd, Path::Host) => 3 * (cross + selfs),
        (Kind::Mmd, Path::TensorOps) => 4 * (cross + selfs),
        (_, Path::Fused) => 8 * (n + m) * (d + 2),
        (_, Path::HostTiled) => {
            let threads = rayon::current_num_threads() as u128;
            // One tile of values per thread (two for the MMD, with its gradient weights) and
            // the product's scratch; the clouds, with copies padded to the register block
            // when `d` is not a multiple of it; for the MMD's cross sweep with both
            // gradients, the column sums of each piece of the split.
            let (buffers, column_sums) = match kind {
                Kind::Mmd => (
                    2,
                    crate::host::tiled::COLUMN_PIECES as u128 * threads * n.max(m) * (d + 1),
                ),
                Kind::Sinkhorn => (1, 0),
            };
            let tile = crate::host::tiled::TILE_ROWS as u128 * (buffers * 2048 + 2 * d + 24);
            let padded = if d % 16 == 0 {
                0
            } else {
                2 * (n + m) * (d + 16)
            };
            12 * (n + m) * d + padded + 24 * (n + m) + threads * tile + column_sums
        }
    };
    let bytes = u64::try_from(elems * elem_bytes as u128).unwrap_or(u64::MAX);
    bytes.saturating_add(truncation_bytes(
        kind,
        path,
        [n as usize, m as usize],
        elem_bytes,
    ))
}

/// The truncated softmins of the Sinkhorn divergence on [`Path::HostTiled`]
/// (`crate::host::tiled::Truncated`): each of the four pairs' sets at its limit, and the
/// candidate lists each thread holds while a set is built.
fn truncation_bytes(kind: Kind, path: Path, [n, m]: [usize; 2], elem_bytes: usize) -> u64 {
    use crate::host::tiled::{
        truncated_entry_bytes, truncated_max_entries, truncation_working_bytes,
    };
    if (kind, path) != (Kind::Sinkhorn, Path::HostTiled) {
        return 0;
    }
    let threads = rayon::current_num_threads() as u64;
    let sets = [(n, m), (m, n), (n, n), (m, m)]
        .iter()
        .map(|&(rows, cols)| truncated_max_entries(rows, cols) as u64)
        .sum::<u64>()
        .saturating_mul(truncated_entry_bytes(elem_bytes));
    sets.saturating_add(threads.saturating_mul(truncation_working_bytes(elem_bytes, n.max(m))))
}

/// The memory available to this process for new allocations (Linux): `MemAvailable` of
/// `/proc/meminfo`, lowered to the room left under the process's address-space and data-size
/// limits (`ulimit -v`, `ulimit -d`: the soft limits of `/proc/self/limits` less the current
/// `VmSize` / `VmData` of `/proc/self/status`); `None` where none of them can be read.
pub fn available_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok();
    let physical = meminfo
        .as_deref()
        .and_then(|text| status_kib(text, "MemAvailable:"))
        .map(|kib| kib.saturating_mul(1024));
    let limits = std::fs::read_to_string("/proc/self/limits").ok();
    let status = std::fs::read_to_string("/proc/self/status").ok();
    let room = |limit: &str, used: &str| -> Option<u64> {
        let limit = soft_limit(limits.as_deref()?, limit)?;
        let used = status_kib(status.as_deref()?, used)?.saturating_mul(1024);
        Some(limit.saturating_sub(used))
    };
    [
        physical,
        room("Max address space", "VmSize:"),
        room("Max data size", "VmData:"),
    ]
    .into_iter()
    .flatten()
    .min()
}

/// The value in kiB of a `Key:   1234 kB` line of a `/proc` file.
fn status_kib(text: &str, key: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(key))?;
    line[key.len()..].split_whitespace().next()?.parse().ok()
}

/// The soft limit in bytes of a line of `/proc/self/limits` (`Max address space  4294967296
/// unlimited  bytes`); `None` when it is unlimited or absent.
fn soft_limit(text: &str, name: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(name))?;
    line[name.len()..].split_whitespace().next()?.parse().ok()
}

/// Refuses a host or tensor-op path on a CPU device whose estimated peak memory
/// ([`estimated_bytes`]) exceeds what is available ([`available_memory`]); the GPU paths are
/// bounded by the device, which refuses oversized buffers itself.
pub fn check_memory(
    kind: Kind,
    path: Path,
    device: &Device,
    dims: [usize; 3],
    elem_bytes: usize,
) -> Result<(), LossError> {
    if !is_cpu(device) || path == Path::Fused {
        return Ok(());
    }
    let needed = estimated_bytes(kind, path, dims, elem_bytes);
    match available_memory() {
        Some(available) if needed > available => Err(LossError::Memory {
            divergence: kind.name(),
            path,
            n: dims[0],
            m: dims[1],
            d: dims[2],
            needed: Bytes(needed),
            available: Bytes(available),
            advice: match path {
                Path::HostTiled => "",
                _ => ", or a GPU (wgpu), whose fused kernels need O((n + m) d)",
            },
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_on_the_cpu_devices() {
        let flex = Device::flex();
        let dims = [100, 80, 4];
        let large = [5000, 4000, 4];
        for kind in [Kind::Sinkhorn, Kind::Mmd] {
            assert!(
                5000 * 4000 >= host_tiled_min_pairs(kind) && 100 * 80 < host_tiled_min_pairs(kind)
            );
            for dtype in [DType::F32, DType::F64] {
                assert_eq!(route(kind, &flex, dtype, large, false), Ok(Path::HostTiled));
            }
            assert_eq!(
                check_path(kind, Path::HostTiled, &flex, DType::F32, dims, false),
                Ok(())
            );
            assert_eq!(
                check_path(kind, Path::Host, &flex, DType::F64, large, false),
                Ok(())
            );
            assert!(check_path(kind, Path::Fused, &flex, DType::F32, dims, false).is_err());
        }
        assert!(check_path(Kind::Mmd, Path::HostTiled, &flex, DType::F32, dims, true).is_err());
        for dtype in [DType::F32, DType::F64] {
            assert_eq!(
                route(Kind::Sinkhorn, &flex, dtype, dims, false),
                Ok(Path::Host)
            );
            assert_eq!(
                route(Kind::Sinkhorn, &flex, dtype, dims, true),
                Ok(Path::Host)
            );
            assert_eq!(route(Kind::Mmd, &flex, dtype, dims, false), Ok(Path::Host));
            assert_eq!(
                route(Kind::Mmd, &flex, dtype, dims, true),
                Ok(Path::TensorOps)
            );
        }
        assert!(!is_wgpu(&flex) && is_cpu(&flex) && fused_min_pairs(&flex).is_none());
    }

    #[test]
    fn proc_limits_are_parsed() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max data size             unlimited            unlimited            bytes\n\
                      Max address space         4294967296           unlimited            bytes\n";
        assert_eq!(soft_limit(limits, "Max address space"), Some(4_294_967_296));
        assert_eq!(soft_limit(limits, "Max data size"), None);
        assert_eq!(soft_limit(limits, "Max stack size"), None);
        let status = "Name:\tfairrep\nVmSize:\t  123456 kB\nVmData:\t 42 kB\n";
        assert_eq!(status_kib(status, "VmSize:"), Some(123_456));
        assert_eq!(status_kib(status, "VmData:"), Some(42));
        assert_eq!(status_kib(status, "VmRSS:"), None);
    }

    #[test]
    fn memory_estimates_grow_with_the_path() {
        let dims = [10_000, 10_000, 16];
        let host = estimated_bytes(Kind::Sinkhorn, Path::Host, dims, 4);
        let fused = estimated_bytes(Kind::Sinkhorn, Path::Fused, dims, 4);
        // Host: 6 n m + 3 (n^2 + m^2) = 1.2e9 floats of 4 bytes.
        assert_eq!(host, 4 * (6 * 100_000_000 + 3 * 200_000_000));
        assert!(fused < 20_000_000, "{fused}");
        // The tiled host path is linear in the points, plus the Sinkhorn divergence's truncated
        // softmins, capped: 10^4 points in 16 dimensions need under 300 MB for the Sinkhorn
        // divergence (its sets at their caps), 10^6 (a million-fold more pairs) under 2 GiB
        // for both divergences, beside the candidate lists that each thread holds while it
        // builds a set (about 136 MB a thread there).
        let tiled = estimated_bytes(Kind::Sinkhorn, Path::HostTiled, dims, 4);
        assert!(tiled < 300_000_000, "{tiled}");
        let threads = rayon::current_num_threads() as u64;
        let lists = threads * crate::host::tiled::truncation_working_bytes(4, 1_000_000);
        for kind in [Kind::Mmd, Kind::Sinkhorn] {
            let big = estimated_bytes(kind, Path::HostTiled, [1_000_000, 1_000_000, 16], 4);
            assert!(big < (2 << 30) + lists, "{big}");
        }
        // 10^6 points cannot fit in any machine on the host path.
        let huge = [1_000_000, 1_000_000, 16];
        let e = check_memory(Kind::Sinkhorn, Path::Host, &Device::flex(), huge, 4);
        if available_memory().is_some() {
            let msg = e.unwrap_err().to_string();
            assert!(msg.contains("needs about") && msg.contains("GiB"), "{msg}");
            // Even the tiled path cannot hold 10^10 points of dimension 1000: refused with the
            // estimate, before anything is allocated.
            let absurd = [10_000_000_000, 10_000_000_000, 1000];
            let e = check_memory(Kind::Mmd, Path::HostTiled, &Device::flex(), absurd, 4);
            let msg = e.unwrap_err().to_string();
            assert!(
                msg.contains("host-tiled") && msg.contains("needs about"),
                "{msg}"
            );
        }
    }
}
