//! # cpu-blas: f32 matrix products on the fastest CPU kernel at hand
//!
//! The system's OpenBLAS (Debian: `apt-get install libopenblas0`) is loaded at run time when
//! it is there: its hand-tuned kernels run large f32 products 1.2–1.5× faster than `gemm`
//! (candle's kernel) on AVX2 machines. Nothing is needed at build time, so binaries stay
//! portable; without the library, or with `SAE_MATMUL=gemm` in the environment, every product
//! answers `None` and the caller uses candle's matmul. Shared by the SAE's sparse step
//! (`sae-core`) and the model's linear layers (`gemma-hooks`).
//!
//! The rows of A are split into blocks of [`ROWS_PER_CALL`] rows spread over rayon's threads,
//! each call running single-threaded OpenBLAS, so no second thread pool competes with rayon's.
//! The blocks do not depend on the thread count, so a product gives the same bits on 2 cores
//! as on 16. What does change the bits is the kernel: OpenBLAS picks its micro-kernels (and so
//! the order it sums in) by CPU and block shape, and gemm dispatches AVX-512 or AVX2 code at run
//! time; [`kernel_description`] names the one in use, so results can say what produced them.
//!
//! ```
//! // [2, 3] · [3, 2], or None where OpenBLAS is not installed.
//! let a = [1f32, 2.0, 3.0, 4.0, 5.0, 6.0];
//! let b = [1f32, 0.0, 0.0, 1.0, 1.0, 1.0];
//! if let Some(c) = cpu_blas::matmul(&a, &b, 2, 3, 2) {
//!     assert_eq!(c, vec![4.0, 5.0, 10.0, 11.0]);
//! }
//! println!("products run on {}", cpu_blas::kernel_description());
//! ```
#![allow(unsafe_code)] // dlopen and two C calls, with their contracts stated below.

use std::sync::OnceLock;

use candle_core::{CpuStorage, DType, Device, Layout, Storage, Tensor};
use rayon::prelude::*;

/// Which kernels a computation may use on the CPU.
///
/// [`Kernels::Fastest`] lets each stage take its CPU-specialised kernel where one applies:
/// this crate's OpenBLAS products, the SAE's sparsity-aware step, the model's fused
/// activation, Adam's in-place update. [`Kernels::Generic`] keeps every stage on candle's
/// own tensor operations, the one code path every device (CUDA, Metal) runs: on the CPU it
/// shows what a GPU computes, and tests compare the two. Off the CPU only the generic path
/// exists, whichever is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum Kernels {
    /// The CPU-specialised kernels where they apply (the default).
    #[default]
    Fastest,
    /// candle's tensor operations only.
    Generic,
}

impl Kernels {
    /// Whether the CPU-specialised kernels may run on `device`.
    pub fn specialised_on(self, device: &Device) -> bool {
        self == Kernels::Fastest && device.is_cpu()
    }

    /// The name `--kernels` takes: `fastest` or `generic`.
    pub fn name(self) -> &'static str {
        match self {
            Kernels::Fastest => "fastest",
            Kernels::Generic => "generic",
        }
    }
}

impl std::fmt::Display for Kernels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Kernels {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        match name {
            "fastest" => Ok(Kernels::Fastest),
            "generic" => Ok(Kernels::Generic),
            other => Err(format!(
                "unknown kernels `{other}` (expected `fastest` or `generic`)"
            )),
        }
    }
}

/// `cblas_sgemm(order, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)`.
type Sgemm = unsafe extern "C" fn(
    i32,
    i32,
    i32,
    i32,
    i32,
    i32,
    f32,
    *const f32,
    i32,
    *const f32,
    i32,
    f32,
    *mut f32,
    i32,
);

/// CBLAS constants: row-major storage; B as stored or transposed.
const ROW_MAJOR: i32 = 101;
const NO_TRANS: i32 = 111;
const TRANS: i32 = 112;

/// The loaded library and its sgemm (the library is kept open for the process's life).
struct OpenBlas {
    _library: libloading::Library,
    sgemm: Sgemm,
    /// `openblas_get_config()`'s first words and `openblas_get_corename()`, when exported.
    version: String,
    core: String,
}

/// Rows of A per OpenBLAS call: fixed, so the blocks (and every row's summation order) are the
/// same whatever the thread count.
pub const ROWS_PER_CALL: usize = 256;

/// Sonames tried, most specific first.
const LIBRARIES: [&str; 3] = ["libopenblas.so.0", "libopenblas.so", "libopenblas.dylib"];

fn openblas() -> Option<&'static OpenBlas> {
    static LOADED: OnceLock<Option<OpenBlas>> = OnceLock::new();
    LOADED
        .get_or_init(|| {
            if std::env::var("SAE_MATMUL").is_ok_and(|v| v == "gemm") {
                return None;
            }
            LIBRARIES.iter().find_map(|name| {
                // SAFETY: loading OpenBLAS runs only its own initialisers; the two symbols
                // are looked up with the signatures of OpenBLAS's cblas.h.
                unsafe {
                    let library = libloading::Library::new(name).ok()?;
                    let sgemm = *library.get::<Sgemm>(b"cblas_sgemm\0").ok()?;
                    let set_threads = *library
                        .get::<unsafe extern "C" fn(i32)>(b"openblas_set_num_threads\0")
                        .ok()?;
                    set_threads(1);
                    let text = |symbol: &[u8]| -> Option<String> {
                        let get = library
                            .get::<unsafe extern "C" fn() -> *const std::ffi::c_char>(symbol)
                            .ok()?;
                        let pointer = get();
                        (!pointer.is_null()).then(|| {
                            std::ffi::CStr::from_ptr(pointer)
                                .to_string_lossy()
                                .into_owned()
                        })
                    };
                    let version = text(b"openblas_get_config\0")
                        .map(|c| c.split_whitespace().take(2).collect::<Vec<_>>().join(" "))
                        .unwrap_or_else(|| "OpenBLAS".into());
                    let core = text(b"openblas_get_corename\0").unwrap_or_default();
                    Some(OpenBlas {
                        _library: library,
                        sgemm,
                        version,
                        core,
                    })
                }
            })
        })
        .as_ref()
}

/// The kernel the products use: `"openblas"`, or `"gemm"` (candle's) when OpenBLAS is absent
/// or disabled.
pub fn backend() -> &'static str {
    if openblas().is_some() {
        "openblas"
    } else {
        "gemm"
    }
}

/// What computes the f32 products, precisely enough that two results with the same
/// description and inputs are bit-identical: OpenBLAS's version and core (its kernels for this
/// CPU) when it is in use, and the instruction set gemm (candle's kernel, used for every other
/// product) dispatches to, e.g. `OpenBLAS 0.3.21 (core Zen) + gemm x86-64-v3 (AVX2, FMA)`.
pub fn kernel_description() -> String {
    let gemm = gemm_description();
    match openblas() {
        Some(blas) if blas.core.is_empty() => format!("{} + {gemm}", blas.version),
        Some(blas) => format!("{} (core {}) + {gemm}", blas.version, blas.core),
        None => gemm,
    }
}

/// candle's own product kernel and the instruction set it dispatches to on this CPU, e.g.
/// `gemm x86-64-v4 (AVX-512)`: what computes every product under [`Kernels::Generic`].
pub fn gemm_description() -> String {
    format!("gemm {}", gemm_instruction_set())
}

/// The instruction set the gemm crate's run-time dispatch picks on this CPU.
fn gemm_instruction_set() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            "x86-64-v4 (AVX-512)"
        } else if std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
        {
            "x86-64-v3 (AVX2, FMA)"
        } else {
            "x86-64 (SSE)"
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        "aarch64 (NEON)"
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        "portable"
    }
}

/// The CPU's fast bf16 instructions, named as `/proc/cpuinfo` names them (`avx512_bf16`,
/// `amx_bf16`), or `None` where it has none: bf16 products would then be emulated and slower
/// than f32. Detected at run time. No product here uses them yet: neither candle's CPU backend
/// (which widens bf16 to f32) nor the OpenBLAS builds at hand (Debian's 0.3.21, PyPI's) has a
/// bf16 kernel, so every CPU product is f32; this says what a bf16 kernel would find.
pub fn bf16_support() -> Option<&'static str> {
    #[cfg(target_arch = "x86_64")]
    {
        let flags = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let has = |flag: &str| {
            flags
                .lines()
                .find(|line| line.starts_with("flags"))
                .is_some_and(|line| line.split_whitespace().any(|f| f == flag))
        };
        if has("amx_bf16") {
            return Some("amx_bf16");
        }
        if std::arch::is_x86_feature_detected!("avx512bf16") {
            return Some("avx512_bf16");
        }
    }
    None
}

/// How an operand of [`product`] is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Operand {
    /// Row-major as used: A `[m, k]`, B `[k, n]`.
    AsStored,
    /// Row-major transposed: A stored `[k, m]`, B stored `[n, k]` (a linear layer's
    /// `[out, in]` weight).
    Transposed,
}

/// op(A)·op(B) into a new row-major `[m, n]` buffer, in blocks of [`ROWS_PER_CALL`] rows of C
/// spread over rayon's threads.
fn product(
    a: &[f32],
    b: &[f32],
    (m, k, n): (usize, usize, usize),
    (left, right): (Operand, Operand),
) -> Option<Vec<f32>> {
    let blas = openblas()?;
    assert_eq!(a.len(), m * k, "A does not hold {m} × {k} values");
    assert_eq!(b.len(), k * n, "B does not hold {k} × {n} values");
    let dim = |d: usize| i32::try_from(d).expect("matrix dimension fits in i32");
    let (trans_a, lda) = match left {
        Operand::AsStored => (NO_TRANS, k),
        Operand::Transposed => (TRANS, m),
    };
    let (trans_b, ldb) = match right {
        Operand::AsStored => (NO_TRANS, n),
        Operand::Transposed => (TRANS, k),
    };
    let mut c = vec![0f32; m * n];
    c.par_chunks_mut(ROWS_PER_CALL * n.max(1))
        .enumerate()
        .for_each(|(block, c)| {
            let rows = c.len() / n.max(1);
            let first = block * ROWS_PER_CALL;
            // The block's rows of op(A): rows of A as stored, or columns of Aᵀ's storage.
            let a = match left {
                Operand::AsStored => &a[first * k..(first + rows) * k],
                Operand::Transposed => &a[first..],
            };
            // SAFETY: op(A) is [rows, k] with leading dimension lda (A as stored: the block's
            // own rows, lda k; transposed: the storage [k, m] from column `first` on, whose
            // last element read, (k − 1)·m + rows − 1, lies within the slice since
            // first + rows ≤ m), op(B) is [k, n] (ldb n, or [n, k] with ldb k) and C is
            // [rows, n] (ldc n), all row-major, as the asserts and chunk sizes above
            // guarantee; OpenBLAS reads A and B and writes only C.
            unsafe {
                (blas.sgemm)(
                    ROW_MAJOR,
                    trans_a,
                    trans_b,
                    dim(rows),
                    dim(n),
                    dim(k),
                    1.0,
                    a.as_ptr(),
                    dim(lda),
                    b.as_ptr(),
                    dim(ldb),
                    0.0,
                    c.as_mut_ptr(),
                    dim(n),
                )
            }
        });
    Some(c)
}

/// A·B for row-major A `[m, k]` and B `[k, n]`, or `None` when OpenBLAS is not available
/// (then use candle's matmul).
///
/// # Panics
/// When the slices' lengths are not `m·k` and `k·n`, or a dimension exceeds `i32::MAX`.
pub fn matmul(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Option<Vec<f32>> {
    product(a, b, (m, k, n), (Operand::AsStored, Operand::AsStored))
}

/// A·Wᵀ for row-major A `[m, k]` and W `[n, k]` (a linear layer's `[out, in]` weight), or
/// `None` when OpenBLAS is not available.
///
/// # Panics
/// When the slices' lengths are not `m·k` and `n·k`, or a dimension exceeds `i32::MAX`.
pub fn matmul_transposed(a: &[f32], w: &[f32], m: usize, k: usize, n: usize) -> Option<Vec<f32>> {
    product(a, w, (m, k, n), (Operand::AsStored, Operand::Transposed))
}

/// Aᵀ·B for row-major A stored `[k, m]` and B `[k, n]` (a weight gradient: Σ over the k rows
/// of the outer products of A's and B's rows), or `None` when OpenBLAS is not available.
///
/// # Panics
/// When the slices' lengths are not `k·m` and `k·n`, or a dimension exceeds `i32::MAX`.
pub fn transposed_matmul(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Option<Vec<f32>> {
    product(a, b, (m, k, n), (Operand::Transposed, Operand::AsStored))
}

/// A contiguous f32 CPU tensor's elements, read in place (no copy), or `None` for any other
/// device, dtype or layout.
pub fn cpu_f32<'a>(storage: &'a Storage, layout: &Layout) -> Option<&'a [f32]> {
    match (storage, layout.contiguous_offsets()) {
        (Storage::Cpu(CpuStorage::F32(data)), Some((start, end))) => Some(&data[start..end]),
        _ => None,
    }
}

/// A linear layer's product x·Wᵀ for f32 CPU tensors, x `[tokens, in]` (laid out
/// contiguously here if it is not) and W `[out, in]` (contiguous), on OpenBLAS; `Ok(None)` for
/// other dtypes, devices or weight layouts, or when OpenBLAS is not available (then use
/// candle's matmul).
pub fn linear(x: &Tensor, weight: &Tensor) -> candle_core::Result<Option<Tensor>> {
    if x.dtype() != DType::F32 || weight.dtype() != DType::F32 || openblas().is_none() {
        return Ok(None);
    }
    let x = x.contiguous()?;
    let ((tokens, input), (out, weight_input)) = (x.dims2()?, weight.dims2()?);
    if input != weight_input {
        return Err(candle_core::Error::Msg(format!(
            "linear: input [{tokens}, {input}] does not match weight [{out}, {weight_input}]"
        )));
    }
    let product = {
        let (x_storage, x_layout) = x.storage_and_layout();
        let (w_storage, w_layout) = weight.storage_and_layout();
        match (cpu_f32(&x_storage, x_layout), cpu_f32(&w_storage, w_layout)) {
            (Some(a), Some(w)) => matmul_transposed(a, w, tokens, input, out),
            _ => None,
        }
    };
    product
        .map(|c| Tensor::from_vec(c, (tokens, out), &Device::Cpu))
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Where OpenBLAS is installed (CI installs it), both products equal a plain triple loop
    /// on small integers (exact in f32); elsewhere the backend says it is gemm.
    #[test]
    fn openblas_products_are_exact_on_small_integers() {
        // m spans two blocks of rows, so the transposed operand's second block starts mid-row.
        let (m, k, n) = (ROWS_PER_CALL + 37, 19, 23);
        let a: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 - 3.0).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i % 5) as f32 - 2.0).collect();
        // Bᵀ stored as [n, k].
        let b_t: Vec<f32> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect();
        // Aᵀ stored as [k, m].
        let a_t: Vec<f32> = (0..k * m).map(|i| a[(i % m) * k + i / m]).collect();
        match (
            matmul(&a, &b, m, k, n),
            matmul_transposed(&a, &b_t, m, k, n),
            transposed_matmul(&a_t, &b, m, k, n),
        ) {
            (Some(c), Some(c_t), Some(t_c)) => {
                assert_eq!(backend(), "openblas");
                for i in 0..m {
                    for j in 0..n {
                        let expected: f32 = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
                        assert_eq!(c[i * n + j], expected, "C[{i}, {j}]");
                        assert_eq!(c_t[i * n + j], expected, "A·Wᵀ [{i}, {j}]");
                        assert_eq!(t_c[i * n + j], expected, "Aᵀ·B [{i}, {j}]");
                    }
                }
            }
            (None, None, None) => assert_eq!(backend(), "gemm"),
            _ => panic!("some products ran on OpenBLAS and others did not"),
        }
    }

    /// The linear product equals candle's x·Wᵀ to f32 rounding, or declines without OpenBLAS
    /// and for non-f32 inputs.
    #[test]
    fn linear_matches_candle() -> candle_core::Result<()> {
        let x = Tensor::randn(0f32, 1.0, (33, 40), &Device::Cpu)?;
        let w = Tensor::randn(0f32, 1.0, (24, 40), &Device::Cpu)?;
        let expected = x.matmul(&w.t()?)?;
        match linear(&x, &w)? {
            Some(y) => {
                let error = (y - &expected)?.abs()?.max_all()?.to_scalar::<f32>()?;
                // |Σ| ≤ 40 terms of order 1: f32 rounding in another order, ~1e-5.
                assert!(error < 1e-4, "differs by {error}");
            }
            None => assert_eq!(backend(), "gemm"),
        }
        assert!(linear(&x.to_dtype(DType::F64)?, &w.to_dtype(DType::F64)?)?.is_none());
        assert!(linear(&x, &w.narrow(1, 0, 39)?.contiguous()?).is_err() || backend() == "gemm");
        Ok(())
    }
}
