"""The ARES paper's testbed (Samikwa et al. 2022) as ready-made profiles.

Measured figures (design notes, section 2): VGG5 on CIFAR-10 with batch 100; cumulative per-cut
compute times of a Jetson Nano in MAXN mode and a Raspberry Pi 3B+; board power of the Nano in MAXN,
5W and a custom low mode and of the Pi. Everything else here is an assumption, stated where made:

- Nano modes other than MAXN were not timed. 5W caps the GPU at 640 MHz against MAXN's 921.6 MHz;
  the measured per-batch times (about 10 ms for a 100-image convolution) are GPU times, so 5W is
  MAXN scaled by 921.6 / 640 = 1.44. The core-limited modes scale 5W compute inversely with the
  cores left of four: one core 4x, three cores 4/3x. That is crude (GPU kernels do not need CPU
  cores, but feeding them does) and only orders the devices plausibly.
- Power: the one-core mode uses the paper's "custom low mode" figures, the three-core mode the 5W
  figures (same clocks and power budget).
- The edge server runs each block in 1/20 of the Nano MAXN time (a desktop GPU against a 128-core
  Maxwell).
- Downlink defaults to the uplink rate: the paper shaped device uplinks with tc; assuming the same
  rate down is the conservative choice.
- Memory budgets: half the board's RAM (Pi 3B+ 1 GiB, Nano 4 GiB); neither binds for VGG5.
- Sizes are float32, 4 bytes per element (the prototype counted 1 byte per float, a bug we do not
  copy); labels travel up as int64 with every split batch.
"""

from __future__ import annotations

from typing import Literal

from planner.compute import BlockCosts, BoardCompute
from planner.profiles import DeviceProfile, ModelProfile, ServerProfile, per_block_from_cumulative
from schemas import PowerFigures

__all__ = [
    "NANO_5W_POWER",
    "NANO_LOW_POWER",
    "NANO_MAXN_POWER",
    "NANO_MODES",
    "PI_POWER",
    "VGG5_COSTS",
    "NanoMode",
    "board_compute",
    "edge_server",
    "jetson_nano",
    "paper_testbed",
    "raspberry_pi",
    "vgg5_model",
]

FLOAT32_BYTES = 4
INT64_BYTES = 8
BATCH_SIZE = 100

# VGG5 entries: conv1(+BN+ReLU), pool, conv2(+BN+ReLU), pool, conv3(+BN+ReLU), fc1(+ReLU), fc2.
VGG5_OUTPUT_ELEMENTS = (32768, 8192, 16384, 4096, 4096, 128, 10)


def _conv_bn_floats(c_in: int, c_out: int) -> int:
    # 3x3 kernel + bias, BN scale and shift, BN running mean and variance (moved with the weights).
    return c_in * c_out * 9 + c_out + 2 * c_out + 2 * c_out


VGG5_PARAM_FLOATS = (
    _conv_bn_floats(3, 32),
    0,
    _conv_bn_floats(32, 64),
    0,
    _conv_bn_floats(64, 64),
    4096 * 128 + 128,
    128 * 10 + 10,
)
# Tensors each entry keeps for backward, in multiples of its output: conv, BN and ReLU outputs;
# max-pool output plus int64 indices (2 floats' worth); fc1 output and ReLU; fc2 output.
VGG5_SAVED_OUTPUTS = (3, 3, 3, 3, 3, 2, 1)

# What each VGG5 block computes and moves, as testbed.block_costs counts it on the model (a test
# checks the two agree): the paper's boards are fitted to these (planner.compute). Block 0:
# 3x3x3 kernels at 32x32x32 outputs (884,736) plus BatchNorm's and ReLU's one per element each.
VGG5_COSTS = BlockCosts(
    flops=(950272, 32768, 4751360, 16384, 2367488, 524416, 1280),
    moved_bytes=(667648, 163840, 360448, 81920, 98304, 17920, 552),
    param_bytes=(4104, 0, 75016, 0, 148744, 2097664, 5160),
)

NANO_MAXN_FORWARD_CUMULATIVE = (0.0094, 0.0150, 0.0199, 0.0202, 0.0431, 0.1071, 0.1238)
NANO_MAXN_BACKWARD_CUMULATIVE = (0.0192, 0.0117, 0.0165, 0.0285, 0.0226, 0.0901, 0.0812)
PI_FORWARD_CUMULATIVE = (0.861, 0.947, 1.447, 1.467, 1.647, 1.777, 1.852)
PI_BACKWARD_CUMULATIVE = (0.492, 0.545, 1.531, 1.476, 1.928, 2.005, 2.092)

NanoMode = Literal["maxn", "5w", "5w-1core", "5w-3core"]
NANO_MODES: tuple[NanoMode, ...] = ("maxn", "5w", "5w-1core", "5w-3core")

NANO_5W_SLOWDOWN = 921.6 / 640.0
NANO_SLOWDOWN: dict[NanoMode, float] = {
    "maxn": 1.0,
    "5w": NANO_5W_SLOWDOWN,
    "5w-1core": NANO_5W_SLOWDOWN * 4.0 / 1.0,
    "5w-3core": NANO_5W_SLOWDOWN * 4.0 / 3.0,
}
EDGE_SPEEDUP = 20.0
PI_MEMORY_BYTES = 512 * 1024**2
NANO_MEMORY_BYTES = 2 * 1024**3


# Board power in watts while computing, transmitting and receiving.
NANO_MAXN_POWER = PowerFigures(compute_w=7.253, transmit_w=2.320, receive_w=2.260)
NANO_5W_POWER = PowerFigures(compute_w=4.205, transmit_w=1.917, receive_w=1.912)
NANO_LOW_POWER = PowerFigures(compute_w=2.396, transmit_w=1.754, receive_w=1.755)
PI_POWER = PowerFigures(compute_w=3.8, transmit_w=1.1, receive_w=0.8)

NANO_POWER: dict[NanoMode, PowerFigures] = {
    "maxn": NANO_MAXN_POWER,
    "5w": NANO_5W_POWER,
    "5w-1core": NANO_LOW_POWER,
    "5w-3core": NANO_5W_POWER,
}


def vgg5_model(batch_size: int = BATCH_SIZE) -> ModelProfile:
    """VGG5 for CIFAR-10: activation, weight and saved-tensor bytes per entry, float32."""
    activations = tuple(n * batch_size * FLOAT32_BYTES for n in VGG5_OUTPUT_ELEMENTS)
    return ModelProfile(
        num_blocks=len(VGG5_OUTPUT_ELEMENTS),
        activation_bytes=activations,
        param_bytes=tuple(n * FLOAT32_BYTES for n in VGG5_PARAM_FLOATS),
        activation_memory_bytes=tuple(
            k * a for k, a in zip(VGG5_SAVED_OUTPUTS, activations, strict=True)
        ),
        batch_size=batch_size,
        label_bytes=batch_size * INT64_BYTES,
    )


def jetson_nano(
    device_id: str,
    mode: NanoMode = "maxn",
    *,
    samples: int = 5000,
    uplink_bps: float = 20e6,
    downlink_bps: float | None = None,
    battery_fraction: float | None = None,
) -> DeviceProfile:
    """A Jetson Nano in ``mode`` (see the module docstring for the non-MAXN assumptions)."""
    slowdown = NANO_SLOWDOWN[mode]
    return DeviceProfile(
        device_id=device_id,
        forward_s=_scaled(NANO_MAXN_FORWARD_CUMULATIVE, slowdown),
        backward_s=_scaled(NANO_MAXN_BACKWARD_CUMULATIVE, slowdown),
        power=NANO_POWER[mode],
        samples=samples,
        uplink_bps=uplink_bps,
        downlink_bps=uplink_bps if downlink_bps is None else downlink_bps,
        memory_bytes=NANO_MEMORY_BYTES,
        battery_fraction=battery_fraction,
    )


def raspberry_pi(
    device_id: str,
    *,
    samples: int = 5000,
    uplink_bps: float = 20e6,
    downlink_bps: float | None = None,
    battery_fraction: float | None = None,
) -> DeviceProfile:
    """A Raspberry Pi 3B+ with the paper's measured times and power."""
    return DeviceProfile(
        device_id=device_id,
        forward_s=per_block_from_cumulative(PI_FORWARD_CUMULATIVE),
        backward_s=per_block_from_cumulative(PI_BACKWARD_CUMULATIVE),
        power=PI_POWER,
        samples=samples,
        uplink_bps=uplink_bps,
        downlink_bps=uplink_bps if downlink_bps is None else downlink_bps,
        memory_bytes=PI_MEMORY_BYTES,
        battery_fraction=battery_fraction,
    )


def edge_server(speedup: float = EDGE_SPEEDUP) -> ServerProfile:
    """The edge server: Nano MAXN per-block times divided by ``speedup``."""
    return ServerProfile(
        forward_s=_scaled(NANO_MAXN_FORWARD_CUMULATIVE, 1.0 / speedup),
        backward_s=_scaled(NANO_MAXN_BACKWARD_CUMULATIVE, 1.0 / speedup),
    )


def paper_testbed(
    uplink_mbps: float = 20.0,
    samples_per_device: int = 5000,
    *,
    downlink_mbps: float | None = None,
) -> tuple[tuple[DeviceProfile, ...], ServerProfile, ModelProfile]:
    """One Raspberry Pi 3B+ and four Jetson Nanos (MAXN, 5W, 5W on one core, 5W on three cores)."""
    up = uplink_mbps * 1e6
    down = None if downlink_mbps is None else downlink_mbps * 1e6
    devices = (
        raspberry_pi("pi3b", samples=samples_per_device, uplink_bps=up, downlink_bps=down),
        *(
            jetson_nano(
                f"nano-{mode}", mode, samples=samples_per_device, uplink_bps=up, downlink_bps=down
            )
            for mode in NANO_MODES
        ),
    )
    return devices, edge_server(), vgg5_model()


def board_compute(board: DeviceProfile | ServerProfile) -> BoardCompute:
    """A built-in board's (or the edge's) compute: its VGG5 times at batch 100 and the rates
    fitted to them, which price any other model's blocks (see planner.compute)."""
    return BoardCompute(board.forward_s, board.backward_s, VGG5_COSTS, BATCH_SIZE)


def _scaled(cumulative: tuple[float, ...], factor: float) -> tuple[float, ...]:
    return tuple(factor * block for block in per_block_from_cumulative(cumulative))
