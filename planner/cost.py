"""The ARES cost model: time and energy of one round for every device at every cut.

For device phi at cut s (device runs blocks [0, s), edge server runs [s, L)):

    Delta_s(phi) = W/xi * ( D_s(phi) + C_s + V_s / B(phi) + V'_s / B'(phi) + Theta )
    E_s(phi)     = W/xi * ( P_c(phi) * D_s(phi) + P_t(phi) * V_s / B(phi)
                            + P_r(phi) * V'_s / B'(phi) )

    D_s  = sum over blocks [0, s) of the device's forward + backward seconds per batch
    C_s  = sum over blocks [s, L) of the server's forward + backward seconds per batch
    V_s  = (activation bytes at cut s + label bytes) * 8 bits, V'_s = gradient bytes at cut s * 8;
           both are 0 at s == L (federated learning: nothing crosses the link, and C_L = 0);
           activation and gradient bytes scaled by the device's ``wire_scale`` (0.5: float16)
    B, B' = uplink and downlink throughput in bit/s
    Theta = ``exchange_s``: per-batch overhead of the exchange with the edge (the round trip beyond
           the transfers and the edge's service: broker hops, framing, scheduling), paid only at
           s < L and at receive power, as the device accounts that wait; a split batch's extra
           device compute ``split_compute_s`` adds to D_s at s < L. Both are learned by the edge
           (``edge_service.overhead``); ``overhead_s`` is paid at every cut (the edge's measured
           fixed cost of a round, per batch), without energy
    a format's encode and decode time, per float32 byte of V_s and V'_s, adds to D_s (the device's
    share, which also costs compute energy) and to C_s (the edge's share): ``codec_s_per_byte``
    W/xi = batches per round = ceil(W / batch_size)

Beyond the paper (``ModelProfile.sync_weights``): each round the device part's weights go down
with the round start and come back at its end, so

    Delta_s(phi) += S_s / B'(phi) + S_s / B(phi)      E_s(phi) += P_r * S_s / B' + P_t * S_s / B

with S_s = 8 * sum of param_bytes[0:s] * weight_scale, once per round (``weight_scale``: the
device's weight wire, 0.25 for int8 deltas against the round start). On slow links this is what
makes federated learning expensive (VGG5: 2.3 MB each way in float32), and leaving it out
mispredicts every cut.

Why ceil: a device with W samples trains ``ceil(W / xi)`` batches per round; the last, partial batch
still pays the per-batch overheads, the messages and most of the compute on these small devices, so
counting it as a full batch is the conservative choice (a fractional W/xi would under-count it).

The device's power while idle (waiting for the server) is not counted, as in the paper.

Cells a device cannot use are +inf in both ``time_s`` and ``energy_j``: cuts outside
``allowed_cuts`` and cuts whose training memory
``param_memory_factor * sum(param_bytes[0:s]) + sum(activation_memory_bytes[0:s])`` exceeds
``memory_bytes``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from planner.energy import device_energy_j
from planner.errors import PlanningError
from planner.profiles import DeviceProfile, ModelProfile, ServerProfile

__all__ = ["CostTable", "batches_per_round", "cost_table", "memory_needed_bytes"]

FloatArray = NDArray[np.float64]


def batches_per_round(samples: int, batch_size: int) -> int:
    """W / xi, rounded up: the number of batches a device with ``samples`` trains per round."""
    return math.ceil(samples / batch_size)


def memory_needed_bytes(model: ModelProfile) -> tuple[int, ...]:
    """Training memory on the device at each cut ``s`` (index ``s - 1``), in bytes."""
    params = np.cumsum(np.asarray(model.param_bytes, dtype=np.float64))
    activations = np.cumsum(np.asarray(model.activation_memory_bytes, dtype=np.float64))
    need = model.param_memory_factor * params + activations
    return tuple(math.ceil(float(v)) for v in need)


@dataclass(frozen=True, slots=True, eq=False)
class CostTable:
    """Per-round time (seconds) and energy (joules) for each device (rows) and cut (columns).

    Column ``j`` is cut ``j + 1``. Infeasible cells are +inf in both arrays; every device has at
    least one feasible cut. The remaining fields are what hysteresis needs to price moving blocks
    (``param_bytes`` per block, per-device link rates and radio powers) and what the battery rule
    needs (``battery_fraction``, None for mains power). Arrays are copied and made read-only.
    """

    device_ids: tuple[str, ...]
    time_s: FloatArray
    energy_j: FloatArray
    battery_fraction: tuple[float | None, ...]
    param_bytes: tuple[int, ...]
    uplink_bps: FloatArray
    downlink_bps: FloatArray
    power_tx_w: FloatArray
    power_rx_w: FloatArray

    def __post_init__(self) -> None:
        ids = tuple(self.device_ids)
        if not ids:
            raise PlanningError("device_ids", "the table needs at least one device")
        if len(set(ids)) != len(ids):
            raise PlanningError("device_ids", "device ids must be unique")
        object.__setattr__(self, "device_ids", ids)
        n = len(ids)
        time = _frozen(self.time_s)
        energy = _frozen(self.energy_j)
        if time.ndim != 2 or time.shape[0] != n or time.shape[1] < 1:
            raise PlanningError("time_s", f"must have shape ({n}, L >= 1), got {time.shape}")
        if energy.shape != time.shape:
            raise PlanningError("energy_j", f"must have shape {time.shape}, got {energy.shape}")
        for name, values in (("time_s", time), ("energy_j", energy)):
            if np.isnan(values).any() or (values < 0).any() or np.isneginf(values).any():
                raise PlanningError(name, "entries must be >= 0 or +inf (infeasible)")
        feasible = np.isfinite(time)
        if not np.array_equal(feasible, np.isfinite(energy)):
            raise PlanningError("energy_j", "must be +inf exactly where time_s is +inf")
        for row, device_id in enumerate(ids):
            if not feasible[row].any():
                raise PlanningError(device_id, "has no feasible cut")
        object.__setattr__(self, "time_s", time)
        object.__setattr__(self, "energy_j", energy)
        cuts = time.shape[1]
        battery = tuple(self.battery_fraction)
        if len(battery) != n:
            raise PlanningError("battery_fraction", f"needs {n} entries, got {len(battery)}")
        for value in battery:
            if value is not None and not (0.0 <= value <= 1.0):
                raise PlanningError(
                    "battery_fraction", f"entries must be None or in [0, 1], got {value!r}"
                )
        object.__setattr__(self, "battery_fraction", battery)
        params = tuple(int(b) for b in self.param_bytes)
        if len(params) != cuts or any(b < 0 for b in params):
            raise PlanningError("param_bytes", f"needs {cuts} entries >= 0")
        object.__setattr__(self, "param_bytes", params)
        for name, positive in (
            ("uplink_bps", True),
            ("downlink_bps", True),
            ("power_tx_w", False),
            ("power_rx_w", False),
        ):
            values = _frozen(getattr(self, name))
            if values.shape != (n,) or not np.isfinite(values).all():
                raise PlanningError(name, f"needs {n} finite entries")
            if (values <= 0).any() if positive else (values < 0).any():
                raise PlanningError(
                    name, "entries must be > 0" if positive else "entries must be >= 0"
                )
            object.__setattr__(self, name, values)

    @classmethod
    def from_arrays(
        cls,
        time_s: ArrayLike,
        energy_j: ArrayLike,
        *,
        device_ids: Sequence[str] | None = None,
        battery_fraction: Sequence[float | None] | None = None,
        param_bytes: Sequence[int] | None = None,
        uplink_bps: ArrayLike | None = None,
        downlink_bps: ArrayLike | None = None,
        power_tx_w: ArrayLike | None = None,
        power_rx_w: ArrayLike | None = None,
    ) -> CostTable:
        """Build a table from raw arrays (tests, benchmarks, replaying logged tables).

        Defaults: ids ``d0, d1, ...``, mains power, weightless blocks (moving is free), 1 Mbit/s
        links and zero radio power.
        """
        time = np.asarray(time_s, dtype=np.float64)
        if time.ndim != 2:
            raise PlanningError("time_s", f"must be 2-D, got shape {time.shape}")
        n, cuts = time.shape
        return cls(
            device_ids=tuple(device_ids)
            if device_ids is not None
            else tuple(f"d{i}" for i in range(n)),
            time_s=time,
            energy_j=np.asarray(energy_j, dtype=np.float64),
            battery_fraction=tuple(battery_fraction)
            if battery_fraction is not None
            else (None,) * n,
            param_bytes=tuple(param_bytes) if param_bytes is not None else (0,) * cuts,
            uplink_bps=_vector(uplink_bps, n, 1e6),
            downlink_bps=_vector(downlink_bps, n, 1e6),
            power_tx_w=_vector(power_tx_w, n, 0.0),
            power_rx_w=_vector(power_rx_w, n, 0.0),
        )

    @property
    def num_devices(self) -> int:
        return len(self.device_ids)

    @property
    def num_cuts(self) -> int:
        """L: the number of blocks, which is also the largest cut."""
        return int(self.time_s.shape[1])

    @property
    def feasible(self) -> NDArray[np.bool_]:
        return np.isfinite(self.time_s)

    def row(self, device_id: str) -> int:
        try:
            return self.device_ids.index(device_id)
        except ValueError:
            raise PlanningError(device_id, "is not in the cost table") from None


def cost_table(
    devices: Sequence[DeviceProfile], server: ServerProfile, model: ModelProfile
) -> CostTable:
    """Evaluate the cost model for every device and cut (see the module docstring)."""
    if not devices:
        raise PlanningError("devices", "needs at least one device")
    L = model.num_blocks
    if server.num_blocks != L:
        raise PlanningError("server", f"has {server.num_blocks} blocks, the model has {L}")
    server_block = np.asarray(server.forward_s) + np.asarray(server.backward_s)
    # C_s: what is left for the server after cut s; the reversed cumsum avoids subtracting sums.
    server_after = np.concatenate([np.cumsum(server_block[::-1])[::-1][1:], [0.0]])
    activation_bits = 8.0 * np.asarray(model.activation_bytes, dtype=np.float64)
    gradient_bits = 8.0 * np.asarray(model.down_bytes, dtype=np.float64)
    # Cut L: federated learning, nothing crosses the link.
    batch_traffic = np.ones(L)
    batch_traffic[-1] = 0.0
    memory_need = np.asarray(memory_needed_bytes(model), dtype=np.float64)
    sync_bits = 8.0 * np.cumsum(np.asarray(model.param_bytes, dtype=np.float64))
    cuts = np.arange(1, L + 1)

    time_rows: list[FloatArray] = []
    energy_rows: list[FloatArray] = []
    for device in devices:
        if device.num_blocks != L:
            raise PlanningError(
                device.device_id, f"has {device.num_blocks} blocks, the model has {L}"
            )
        if device.allowed_cuts is not None and max(device.allowed_cuts) > L:
            raise PlanningError(
                device.device_id, f"allowed_cuts {sorted(device.allowed_cuts)} exceed L = {L}"
            )
        device_before = np.cumsum(np.asarray(device.forward_s) + np.asarray(device.backward_s))
        up_bits = (activation_bits * device.wire_scale + 8.0 * model.label_bytes) * batch_traffic
        down_bits = gradient_bits * device.wire_scale * batch_traffic
        up_s = up_bits / device.uplink_bps
        down_s = down_bits / device.downlink_bps
        crossing = (activation_bits + gradient_bits) / 8.0 * batch_traffic
        device_codec = crossing * device.codec_s_per_byte
        edge_codec = crossing * device.edge_codec_s_per_byte
        batches = batches_per_round(device.samples, model.batch_size)
        device_s = device_before + device_codec + device.split_compute_s * batch_traffic
        # Theta: a split batch's round trip beyond its transfers and the edge's service, spent
        # waiting for the gradient, which the device accounts as receiving.
        receive_s = down_s + device.exchange_s * batch_traffic
        time = batches * (device_s + server_after + edge_codec + up_s + receive_s)
        time = time + batches * device.overhead_s
        power = device.power
        energy = batches * device_energy_j(power, device_s, up_s, receive_s)
        if model.sync_weights:
            sync_up_s = sync_bits * device.weight_scale / device.uplink_bps
            sync_down_s = sync_bits * device.weight_scale / device.downlink_bps
            time = time + sync_up_s + sync_down_s
            energy = energy + device_energy_j(power, 0.0, sync_up_s, sync_down_s)
        feasible = np.ones(L, dtype=bool)
        if device.allowed_cuts is not None:
            feasible &= np.isin(cuts, sorted(device.allowed_cuts))
        if device.memory_bytes is not None:
            feasible &= memory_need <= device.memory_bytes
        if not feasible.any():
            field = "memory_bytes" if device.memory_bytes is not None else "allowed_cuts"
            raise PlanningError(device.device_id, f"no cut is feasible (check {field})")
        time_rows.append(np.where(feasible, time, np.inf))
        energy_rows.append(np.where(feasible, energy, np.inf))

    return CostTable(
        device_ids=tuple(d.device_id for d in devices),
        time_s=np.vstack(time_rows),
        energy_j=np.vstack(energy_rows),
        battery_fraction=tuple(d.battery_fraction for d in devices),
        param_bytes=model.param_bytes,
        uplink_bps=np.array([d.uplink_bps for d in devices], dtype=np.float64),
        downlink_bps=np.array([d.downlink_bps for d in devices], dtype=np.float64),
        power_tx_w=np.array([d.power.transmit_w for d in devices], dtype=np.float64),
        power_rx_w=np.array([d.power.receive_w for d in devices], dtype=np.float64),
    )


def _frozen(values: ArrayLike) -> FloatArray:
    array = np.array(values, dtype=np.float64)  # a copy, so the caller's array stays theirs
    array.setflags(write=False)
    return array


def _vector(values: ArrayLike | None, n: int, default: float) -> FloatArray:
    if values is None:
        return np.full(n, default, dtype=np.float64)
    return np.broadcast_to(np.asarray(values, dtype=np.float64), (n,)).copy()
