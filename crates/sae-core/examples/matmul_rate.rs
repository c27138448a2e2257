//! Dense f32 matmul rate of this build at the SAE encoder shape (GFLOP/s).
fn main() -> candle_core::Result<()> {
    use candle_core::{Device, Tensor};
    let (b, d, m) = (4096, 2304, 16384);
    let x = Tensor::randn(0f32, 1.0, (b, d), &Device::Cpu)?;
    let w = Tensor::randn(0f32, 1.0, (d, m), &Device::Cpu)?;
    let _ = x.matmul(&w)?;
    let start = std::time::Instant::now();
    for _ in 0..3 {
        let _ = x.matmul(&w)?;
    }
    let seconds = start.elapsed().as_secs_f64() / 3.0;
    println!(
        "[{b}x{d}]x[{d}x{m}]: {:.1} GFLOP/s",
        2.0 * (b * d * m) as f64 / seconds / 1e9
    );
    Ok(())
}
