//! Where a small training step's time goes inside burn, with burn alone (no fairrep code), so
//! that the figures can be reproduced and reported upstream.
//!
//! The model is the shipped Adult configs' MLP (101 -> 128 -> ReLU -> dropout 0.1 -> 32 -> 1),
//! the step a BCE-with-logits loss, backward and Adam, at batch 512 on the Flex device. The
//! program times, per call (median of `--repeats` rounds of `--iters` calls, after a warm-up):
//!
//! - `add [1]`: one elementwise add of two one-element tensors, plain and on the autodiff
//!   device (the fixed cost of dispatching an op);
//! - `matmul`: `[512, 101] x [101, 128]`, the step's largest product, plain;
//! - `forward`: the MLP's forward pass and loss, plain;
//! - `backward`: forward + loss + `backward()` on the autodiff device;
//! - `step`: forward + loss + backward + `GradientsParams` + Adam;
//! - the same with the batch selected from an autodiff tensor, as the trainer makes it;
//! - forward passes on the autodiff device whose graphs are dropped without a backward, then
//!   the first backward after them (which frees their nodes) and the steady state again.
//!
//! The backward calls of the first loops drop their gradients unread; their per-call time
//! grows with their number (compare `--iters 50 --repeats 3` with `--iters 100 --repeats 5`),
//! which the trainer, reading every step's gradients, does not show.
//! - `select`: gathering 512 rows of a `[30162, 101]` tensor by an index tensor (the batch).
//! - `dropout`: burn's `Dropout` (p = 0.1) on a `[512, 128]` activation on the autodiff device,
//!   against the same mask filled on the host from a ChaCha8 stream, copied to the device and
//!   multiplied in (one op instead of burn's per-value Bernoulli draws and two products).
//!
//! ```sh
//! cargo run --release --workspace --example burn_step -- --iters 200 --repeats 5
//! ```
#![allow(clippy::print_stdout)]

use std::time::Instant;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig, Linear, LinearConfig};
use burn::optim::{AdamConfig, GradientsParams, ModuleOptimizer};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Int, Tensor, TensorData};

#[derive(Module, Debug)]
struct Mlp {
    l1: Linear,
    l2: Linear,
    head: Linear,
    dropout: Dropout,
}

impl Mlp {
    fn new(device: &Device) -> Self {
        Self {
            l1: LinearConfig::new(101, 128).init(device),
            l2: LinearConfig::new(128, 32).init(device),
            head: LinearConfig::new(32, 1).init(device),
            dropout: DropoutConfig::new(0.1).init(),
        }
    }

    fn loss(&self, x: Tensor<2>, y: Tensor<2>) -> Tensor<1> {
        let z = self
            .l2
            .forward(self.dropout.forward(relu(self.l1.forward(x))));
        let logits = self.head.forward(z);
        let softplus = logits.clone().abs().neg().exp().log1p();
        (relu(logits.clone()) - logits * y + softplus).mean()
    }
}

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Median seconds per call of `f` over `repeats` rounds of `iters` calls.
fn time(iters: usize, repeats: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..iters.min(20) {
        f();
    }
    let mut rounds: Vec<f64> = (0..repeats)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..iters {
                f();
            }
            start.elapsed().as_secs_f64() / iters as f64
        })
        .collect();
    rounds.sort_by(f64::total_cmp);
    rounds[rounds.len() / 2]
}

fn random(shape: [usize; 2], device: &Device) -> Tensor<2> {
    Tensor::random(shape, burn::tensor::Distribution::Default, device)
}

fn main() {
    let iters = arg("--iters", 200);
    let repeats = arg("--repeats", 5);
    let batch = arg("--batch", 512);
    let plain = Device::flex();
    let ad = plain.clone().autodiff();
    ad.seed(0);
    let report = |what: &str, seconds: f64| println!("{what:<40} {:>10.1} us", seconds * 1e6);

    let (a, b) = (random([1, 1], &plain), random([1, 1], &plain));
    report(
        "add [1], plain",
        time(iters * 10, repeats, || {
            let _ = (a.clone() + b.clone()).into_scalar::<f32>();
        }),
    );
    let (a, b) = (random([1, 1], &ad).require_grad(), random([1, 1], &ad));
    report(
        "add [1], autodiff",
        time(iters * 10, repeats, || {
            let _ = (a.clone() + b.clone()).into_scalar::<f32>();
        }),
    );

    let x = random([batch, 101], &plain);
    let w = random([101, 128], &plain);
    report(
        &format!("matmul [{batch}, 101] x [101, 128]"),
        time(iters, repeats, || {
            let _ = x.clone().matmul(w.clone()).into_data();
        }),
    );

    let rows = 30162;
    let table = random([rows, 101], &ad);
    let idx: Vec<i64> = (0..batch as i64).map(|i| (i * 59) % rows as i64).collect();
    report(
        &format!("select {batch} rows of [{rows}, 101]"),
        time(iters, repeats, || {
            let index = Tensor::<1, Int>::from_data(TensorData::new(idx.clone(), [batch]), &ad);
            let _ = table.clone().select(0, index);
        }),
    );

    let y = Tensor::<2>::from_data(
        TensorData::new(
            (0..batch)
                .map(|i| (i % 3 == 0) as u8 as f32)
                .collect::<Vec<_>>(),
            [batch, 1],
        ),
        &plain,
    );
    let model_plain = Mlp::new(&plain);
    report(
        "forward + loss, plain",
        time(iters, repeats, || {
            let _ = model_plain.loss(x.clone(), y.clone()).into_scalar::<f32>();
        }),
    );

    let mut model = Mlp::new(&ad);
    let (xa, ya) = (x.clone().to_device(&ad), y.clone().to_device(&ad));
    report(
        "forward + loss + backward",
        time(iters, repeats, || {
            let _ = model.loss(xa.clone(), ya.clone()).backward();
        }),
    );
    // The batch as the trainer makes it: rows selected from an autodiff tensor.
    let index = Tensor::<1, Int>::from_data(TensorData::new(idx.clone(), [batch]), &ad);
    let xs = table.clone().select(0, index);
    report(
        "forward + loss + backward, selected batch",
        time(iters, repeats, || {
            let _ = model.loss(xs.clone(), ya.clone()).backward();
        }),
    );
    let mut optim: ModuleOptimizer = AdamConfig::new().init();
    report(
        "step (+ GradientsParams + Adam)",
        time(iters, repeats, || {
            let loss = model.loss(xa.clone(), ya.clone());
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(1e-3, model.clone(), grads);
        }),
    );
    // Forward passes on the autodiff device whose graphs are dropped without a backward: their
    // nodes stay registered until a later backward frees them.
    report(
        "forward + loss, autodiff, no backward",
        time(iters, repeats, || {
            let _ = model.loss(xa.clone(), ya.clone()).into_scalar::<f32>();
        }),
    );
    let start = Instant::now();
    let _ = model.loss(xa.clone(), ya.clone()).backward();
    report(
        "the next forward + loss + backward",
        start.elapsed().as_secs_f64(),
    );
    report(
        "forward + loss + backward again",
        time(iters, repeats, || {
            let _ = model.loss(xa.clone(), ya.clone()).backward();
        }),
    );
    // Last: these graphs are dropped without a backward too, which slows later backward
    // calls (above).
    let h = random([batch, 128], &ad).require_grad();
    let dropout = DropoutConfig::new(0.1).init();
    report(
        &format!("dropout [{batch}, 128], burn's Dropout"),
        time(iters, repeats, || {
            let _ = dropout.forward(h.clone());
        }),
    );
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let mut draws = vec![0u32; batch * 128];
    let threshold = (0.9f64 * 4_294_967_296.0).round() as u64;
    report(
        &format!("dropout [{batch}, 128], ChaCha8 host mask"),
        time(iters, repeats, || {
            rng.fill(&mut draws[..]);
            let mask: Vec<f32> = draws
                .iter()
                .map(|&u| {
                    if u64::from(u) < threshold {
                        1.0 / 0.9
                    } else {
                        0.0
                    }
                })
                .collect();
            let mask = Tensor::<2>::from_data(TensorData::new(mask, [batch, 128]), &ad);
            let _ = h.clone() * mask;
        }),
    );
}
