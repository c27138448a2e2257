//! The sparse step's one dense product, C = A·B in f32, on the fastest CPU kernel at hand.
//!
//! The system's OpenBLAS (Debian: `apt-get install libopenblas0`) is loaded at run time when
//! it is there: its hand-tuned kernels run this CPU's encoder product about 1.3–1.5× faster
//! than `gemm` (candle's kernel) on AVX2 machines. Nothing is needed at build time, so
//! binaries stay portable; without the library, or with `SAE_MATMUL=gemm` in the environment,
//! [`matmul`] answers `None` and the caller uses candle's matmul.
//!
//! The rows of A are split across rayon's threads, each running single-threaded OpenBLAS, so
//! no second thread pool competes with rayon's.
#![allow(unsafe_code)] // dlopen and two C calls, with their contracts stated below.

use std::sync::OnceLock;

use rayon::prelude::*;

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

/// CBLAS constants: row-major storage, no transposition.
const ROW_MAJOR: i32 = 101;
const NO_TRANS: i32 = 111;

/// The loaded library and its sgemm (the library is kept open for the process's life).
struct OpenBlas {
    _library: libloading::Library,
    sgemm: Sgemm,
}

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
                    Some(OpenBlas {
                        _library: library,
                        sgemm,
                    })
                }
            })
        })
        .as_ref()
}

/// The kernel [`matmul`] uses: `"openblas"`, or `"gemm"` (candle's) when OpenBLAS is absent
/// or disabled.
pub fn backend() -> &'static str {
    if openblas().is_some() {
        "openblas"
    } else {
        "gemm"
    }
}

/// A·B for row-major A `[m, k]` and B `[k, n]`, or `None` when OpenBLAS is not available
/// (then use candle's matmul).
///
/// # Panics
/// When the slices' lengths are not `m·k` and `k·n`, or a dimension exceeds `i32::MAX`.
pub fn matmul(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Option<Vec<f32>> {
    let blas = openblas()?;
    assert_eq!(a.len(), m * k, "A is not [{m}, {k}]");
    assert_eq!(b.len(), k * n, "B is not [{k}, {n}]");
    let dim = |d: usize| i32::try_from(d).expect("matrix dimension fits in i32");
    let mut c = vec![0f32; m * n];
    let rows_per_task = m.div_ceil(rayon::current_num_threads()).max(1);
    c.par_chunks_mut(rows_per_task * n.max(1))
        .zip(a.par_chunks(rows_per_task * k.max(1)))
        .for_each(|(c, a)| {
            let rows = c.len() / n.max(1);
            // SAFETY: A is [rows, k], B [k, n] and C [rows, n], all row-major with their
            // leading dimensions k, n, n, as the asserts and chunk sizes above guarantee;
            // OpenBLAS reads A and B and writes only C.
            unsafe {
                (blas.sgemm)(
                    ROW_MAJOR,
                    NO_TRANS,
                    NO_TRANS,
                    dim(rows),
                    dim(n),
                    dim(k),
                    1.0,
                    a.as_ptr(),
                    dim(k),
                    b.as_ptr(),
                    dim(n),
                    0.0,
                    c.as_mut_ptr(),
                    dim(n),
                )
            }
        });
    Some(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Where OpenBLAS is installed (CI installs it), its product equals a plain triple loop
    /// on small integers (exact in f32); elsewhere the backend says it is gemm.
    #[test]
    fn openblas_product_is_exact_on_small_integers() {
        let (m, k, n) = (37, 19, 23);
        let a: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 - 3.0).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i % 5) as f32 - 2.0).collect();
        match matmul(&a, &b, m, k, n) {
            Some(c) => {
                assert_eq!(backend(), "openblas");
                for i in 0..m {
                    for j in 0..n {
                        let expected: f32 = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
                        assert_eq!(c[i * n + j], expected, "C[{i}, {j}]");
                    }
                }
            }
            None => assert_eq!(backend(), "gemm"),
        }
    }
}
