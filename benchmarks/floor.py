"""The compute floor of RONAN inversion on a DCGAN: how fast could it possibly be here?

    python -m benchmarks.floor [--ngf 32] [--nc 1] [--restarts 8] [--steps 1500]

Floor = FLOPs of the work / the machine's measured float32 matrix-multiply rate.

- Forward FLOPs are counted analytically from the DCGAN config: a transposed convolution
  ``Cin -> Cout`` with a ``k x k`` kernel on an ``H_in x W_in`` input does
  ``Cin * Cout * k * k * H_in * W_in`` multiply-adds (each input pixel scatters one
  ``Cin x (Cout k k)`` product), i.e. twice that in FLOPs. BatchNorm (inference: one scale and
  shift), ReLU, tanh, the [0, 1] mapping, the MSE and Adam are elementwise and negligible
  (:func:`elementwise_flops` counts them, well under 1 % of the convolutions).
- Inversion needs the gradient with respect to the *input* only (the generator is frozen):
  backward costs one more pass of the same size (the transposed products), so a step is
  2x the forward. Frameworks that also form weight gradients pay 3x; both are reported.
- Per image: x restarts x steps.

The cross-check :func:`xla_forward_flops` asks XLA (``compiled.cost_analysis()``) for its own
count of the forward. For ``impl="lax"`` it is higher: the input-dilated convolution that
implements a stride-2 transposed convolution multiplies the inserted zeros too.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from typing import Any

import jax
import jax.numpy as jnp

from ronan_jax.models.dcgan import DCGANConfig

KERNEL = 4


@dataclasses.dataclass(frozen=True)
class ConvLayer:
    """One transposed convolution of the DCGAN generator."""

    cin: int
    cout: int
    kernel: int
    h_in: int
    w_in: int

    @property
    def macs(self) -> int:
        return self.cin * self.cout * self.kernel * self.kernel * self.h_in * self.w_in

    @property
    def flops(self) -> int:
        return 2 * self.macs

    @property
    def out_elements(self) -> int:
        stride = 1 if self.h_in == 1 else 2
        h_out = KERNEL if self.h_in == 1 else stride * self.h_in
        return self.cout * h_out * h_out


def dcgan_layers(config: DCGANConfig) -> list[ConvLayer]:
    """The generator's transposed convolutions (pytorch/examples topology, see models.dcgan)."""
    layers = []
    size = 1
    cin = config.nz + config.num_classes
    for i in range(config.depth):
        last = i == config.depth - 1
        cout = config.nc if last else config.ngf * 2 ** (config.depth - 2 - i)
        layers.append(ConvLayer(cin, cout, KERNEL, size, size))
        size = KERNEL if i == 0 else 2 * size
        cin = cout
    return layers


def forward_flops(config: DCGANConfig) -> int:
    """FLOPs (2 x multiply-adds) of the generator's transposed convolutions, one sample."""
    return sum(layer.flops for layer in dcgan_layers(config))


def elementwise_flops(config: DCGANConfig) -> int:
    """Rough FLOPs of everything that is not a convolution, one sample, forward: BatchNorm
    (2 per element) + ReLU (1) on hidden layers, tanh (~10) + [0, 1] map and clip (3) + MSE (3)
    on the output."""
    layers = dcgan_layers(config)
    hidden = sum(layer.out_elements for layer in layers[:-1])
    out = layers[-1].out_elements
    return 3 * hidden + 16 * out


def step_flops(config: DCGANConfig, backward_factor: int = 2) -> int:
    """FLOPs of one optimisation step of one restart: forward x ``backward_factor`` (2: input
    gradient only, what inversion needs; 3: also the weight gradients)."""
    return backward_factor * forward_flops(config)


def image_flops(config: DCGANConfig, restarts: int, steps: int, backward_factor: int = 2) -> int:
    """FLOPs of inverting one image: restarts x steps optimisation steps."""
    return step_flops(config, backward_factor) * restarts * steps


def xla_forward_flops(generator: Any, batch: int = 1) -> float | None:
    """XLA's own FLOP count of one forward (per sample), or None if the backend has none."""
    z = jnp.zeros((batch, *generator.input_shape), jnp.float32)
    try:
        compiled = jax.jit(lambda p, x: generator.apply_fn(p, x, None)).lower(generator.params, z).compile()
        cost = compiled.cost_analysis()
    except Exception:  # cost analysis is optional per backend
        return None
    if isinstance(cost, list | tuple):
        cost = cost[0] if cost else None
    if not cost or "flops" not in cost:
        return None
    return float(cost["flops"]) / batch


def jax_matmul_gflops(n: int = 2048, reps: int = 5, dtype: Any = jnp.float32) -> float:
    """Best-of-``reps`` rate of an ``n x n`` float32 ``jnp.dot`` on the default device, GFLOP/s."""
    a = jax.random.normal(jax.random.key(0), (n, n), dtype)
    b = jax.random.normal(jax.random.key(1), (n, n), dtype)
    dot = jax.jit(jnp.dot)
    dot(a, b).block_until_ready()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        dot(a, b).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n**3 / best / 1e9


def floor_seconds(flops: float, gflops: float) -> float:
    return flops / (gflops * 1e9)


def floor_report(config: DCGANConfig, restarts: int, steps: int, gflops: float) -> dict[str, Any]:
    """Every floor figure of one config at one matmul rate (JSON-ready)."""
    fwd = forward_flops(config)
    out: dict[str, Any] = {
        "layers": [dataclasses.asdict(layer) | {"macs": layer.macs} for layer in dcgan_layers(config)],
        "forward_flops": fwd,
        "elementwise_flops": elementwise_flops(config),
        "restarts": restarts,
        "steps": steps,
        "matmul_gflops": gflops,
    }
    for factor in (2, 3):
        flops = image_flops(config, restarts, steps, factor)
        out[f"image_flops_x{factor}"] = flops
        out[f"floor_s_per_image_x{factor}"] = floor_seconds(flops, gflops)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nz", type=int, default=100)
    ap.add_argument("--ngf", type=int, default=32)
    ap.add_argument("--nc", type=int, default=1)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--restarts", type=int, default=8)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--matmul", type=int, default=2048, help="side of the timed square matmul")
    args = ap.parse_args(argv)
    cfg = DCGANConfig(nz=args.nz, ngf=args.ngf, nc=args.nc, depth=args.depth)
    gflops = jax_matmul_gflops(args.matmul)
    rep = floor_report(cfg, args.restarts, args.steps, gflops)
    for layer in rep["layers"]:
        print(f"  convT {layer['cin']:4d} -> {layer['cout']:4d} on {layer['h_in']:2d}x{layer['w_in']:<2d}: "
              f"{layer['macs'] / 1e6:8.3f} M MACs")
    print(f"forward {rep['forward_flops'] / 1e6:.3f} MFLOP/sample (elementwise ~{rep['elementwise_flops'] / 1e6:.3f} MFLOP, "
          f"{100 * rep['elementwise_flops'] / rep['forward_flops']:.2f} %)")
    print(f"{jax.devices()[0].device_kind}: f32 {args.matmul}^2 matmul {gflops:.1f} GFLOP/s")
    for factor in (2, 3):
        print(f"x{factor}: {rep[f'image_flops_x{factor}'] / 1e9:.1f} GFLOP/image -> floor "
              f"{rep[f'floor_s_per_image_x{factor}']:.3f} s/image at {args.steps} steps x {args.restarts} restarts")


if __name__ == "__main__":
    main()
